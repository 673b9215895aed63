"""The model shares the CPU with the threads answering requests: they run first, and the
model's thread gets the GIL back quickly."""

import os
import sys
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from batching.thread_priority import lower_this_threads_priority
from service.app import create_app
from service.model.gil import MODEL_PROCESS_SWITCH_INTERVAL_S
from tests.conftest import lite0_settings


def nice_of(thread: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread)


def threads() -> set[int]:
    return {int(task.name) for task in Path("/proc/self/task").iterdir()}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux only")
def test_the_model_thread_and_its_openmp_team_run_nicer_and_nothing_else_does() -> None:
    main_nice = nice_of(threading.get_native_id())
    seen: dict[str, object] = {}

    def model_thread() -> None:
        lower_this_threads_priority(3)
        seen["model"] = nice_of(threading.get_native_id())
        before = threads()
        torch.set_num_threads(2)
        torch.ones(512, 512) @ torch.ones(512, 512)  # a parallel region: starts its team
        seen["team"] = {nice_of(thread) for thread in threads() - before}

    thread = threading.Thread(target=model_thread)
    thread.start()
    thread.join()
    assert seen["model"] == main_nice + 3
    assert seen["team"] and seen["team"] <= {main_nice + 3}  # every thread it started
    assert nice_of(threading.get_native_id()) == main_nice  # the caller's threads untouched
    lower_this_threads_priority(0)
    assert nice_of(threading.get_native_id()) == main_nice


def test_the_process_that_runs_the_model_hands_the_gil_over_within_half_a_millisecond(
    tmp_path: Path,
) -> None:
    default = 0.005
    sys.setswitchinterval(default)
    try:
        with TestClient(create_app(lite0_settings(tmp_path))):
            assert sys.getswitchinterval() == pytest.approx(MODEL_PROCESS_SWITCH_INTERVAL_S)
    finally:
        sys.setswitchinterval(default)

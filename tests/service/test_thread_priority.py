"""The model's threads run nicer than the threads that answer requests."""

import os
import threading
from pathlib import Path

import pytest
import torch

from service.model.thread_priority import lower_this_threads_priority


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

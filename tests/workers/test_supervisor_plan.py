"""What the supervisor starts: one model worker per device, the index worker, N HTTP workers;
and what it clears away first: what killed supervisors left behind."""

import json
import os
import subprocess
from pathlib import Path

from service.process_dirs import remove_leftovers
from service.settings import Settings, available_cores
from service.workers.supervisor import Supervisor, WorkerSpec
from tests.conftest import pinned_settings


def flag(worker: WorkerSpec, name: str) -> str:
    return worker.args[worker.args.index(name) + 1]


def settings_of(worker: WorkerSpec) -> Settings:
    return Settings.model_validate(json.loads(flag(worker, "--settings")))


def test_plan_has_one_model_worker_per_device_an_index_worker_and_http_workers(
    tmp_path: Path,
) -> None:
    settings = pinned_settings(tmp_path, device="cpu").model_copy(update={"port": 8123})
    workers = Supervisor(settings, http_workers=3).plan(7, tmp_path)
    assert [w.role for w in workers] == ["model", "index", "http", "http", "http"]
    model, _, *http = workers
    assert settings_of(model).device == "cpu" and flag(model, "--device-number") == "0"
    # Every worker finds the others' sockets (one per model version) in one directory.
    assert {flag(worker, "--sockets") for worker in workers} == {str(tmp_path)}
    for worker in http:
        assert worker.pass_fds == (7,) and flag(worker, "--listen-fd") == "7"
        assert flag(worker, "--model-workers") == "1"
    assert len({flag(worker, "--slots") for worker in http}) == 3  # each its own slots


def test_http_workers_share_the_cores_unless_decode_threads_is_set(tmp_path: Path) -> None:
    implicit = Settings(data_dir=tmp_path, device="cpu")  # decode_threads: the default
    (http, *_) = [w for w in Supervisor(implicit, 2).plan(7, tmp_path) if w.role == "http"]
    assert settings_of(http).decode_threads == max(1, available_cores() // 2)
    explicit = Settings(data_dir=tmp_path, device="cpu", decode_threads=5)
    (http, *_) = [w for w in Supervisor(explicit, 2).plan(7, tmp_path) if w.role == "http"]
    assert settings_of(http).decode_threads == 5


def test_what_killed_supervisors_left_behind_is_removed_and_nothing_else(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead, live, this = finished.pid, os.getppid(), os.getpid()
    names = [
        f"resnet-serve-{dead}",  # slots of a supervisor killed with SIGKILL
        f"resnet-serve-{dead}-k2x9a1",  # its sockets and metrics
        f"resnet-serve-{this}",  # a dead one's, whose pid this process was given
        f"resnet-serve-{live}",  # a running service's
        f"resnet-serve-{live}-q8b7c6",
        "resnet-serve-model-cache",  # not a supervisor's
        "other-123",
    ]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "slots").write_bytes(b"x")
    remove_leftovers(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names[3:])

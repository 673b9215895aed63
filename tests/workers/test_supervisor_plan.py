"""What the supervisor starts: one model worker per device, the index worker, N HTTP workers."""

import json
from pathlib import Path

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
    model, index, *http = workers
    assert settings_of(model).device == "cpu"
    assert flag(index, "--model-socket") == flag(model, "--socket")
    for worker in http:
        assert worker.pass_fds == (7,) and flag(worker, "--listen-fd") == "7"
        assert flag(worker, "--model-socket") == flag(model, "--socket")
        assert flag(worker, "--index-socket") == flag(index, "--socket")
    assert len({flag(worker, "--slots") for worker in http}) == 3  # each its own slots


def test_http_workers_share_the_cores_unless_decode_threads_is_set(tmp_path: Path) -> None:
    implicit = Settings(data_dir=tmp_path, device="cpu")  # decode_threads: the default
    (http, *_) = [w for w in Supervisor(implicit, 2).plan(7, tmp_path) if w.role == "http"]
    assert settings_of(http).decode_threads == max(1, available_cores() // 2)
    explicit = Settings(data_dir=tmp_path, device="cpu", decode_threads=5)
    (http, *_) = [w for w in Supervisor(explicit, 2).plan(7, tmp_path) if w.role == "http"]
    assert settings_of(http).decode_threads == 5

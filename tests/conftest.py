"""Fixtures shared by every suite."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

# Both cores for the model (scripts/test runs two test files at once: see below).
os.environ.setdefault("OMP_NUM_THREADS", "2")
# No service a test starts listens on the default gRPC port (8001): a test that wants the
# gRPC face gives it a free port.
os.environ.setdefault("RESNET_SERVE_GRPC_PORT", "0")


# The longest units first, so that two workers finish together (longest processing time
# first): the Ray files (one unit), fine-tuning, the multi-process and first-start files.
_LONGEST_FIRST = (
    "tests/cluster/",
    "tests/finetune/",
    "tests/e2e/test_workers.py",
    "tests/service/test_first_start.py",
    "tests/e2e/",
    "tests/service/test_backends.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the files with the longest tests are handed out first (a stable
    sort: the order within a file stays)."""
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the one handed out
        root = config.rootpath

        def rank(item: pytest.Item) -> int:
            path = item.path.relative_to(root).as_posix()
            found = (i for i, prefix in enumerate(_LONGEST_FIRST) if path.startswith(prefix))
            return next(found, len(_LONGEST_FIRST))

        items.sort(key=rank)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under pytest-xdist (scripts/test), a test file goes to one worker whole (its module
    fixtures, a server or a Milvus, start once), and tests/cluster as one: each file there
    starts a Ray of its own, and two at once would compete for Ray's ports. (The xdist_group
    mark cannot say this: pytest-xdist 3.8 groups by a node id that pytest 9 no longer
    shows it.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/cluster" if path.startswith("tests/cluster/") else path

    return ByFile(config, log)  # type: ignore[arg-type]


# The reference backend and a fixed batch: no backend search outside the backend tests.
PINNED_BACKEND = {"backend": "torch", "precision": "fp32", "max_batch_size": 8}


def pinned_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: the data directory given, both cores, the reference backend."""
    # No web page in process: the UI is tested against a real server (tests/e2e/test_ui.py).
    base: dict[str, object] = {
        "data_dir": data_dir,
        "threads": 2,
        "decode_threads": 2,
        "ui": False,
    }
    return Settings(**(base | PINNED_BACKEND | overrides))  # type: ignore[arg-type]


def lite0_settings(data_dir: Path, **overrides: object) -> Settings:
    """The real offline ImageNet weights: fast (0.4 GFLOP) and correct predictions."""
    base: dict[str, object] = {
        "model": "tf_efficientnet_lite0",
        "weights": "lite0-package",
        "max_upload_bytes": 1_000_000,
        "max_image_pixels": 4_000_000,
        "max_batch_files": 4,
    }
    return pinned_settings(data_dir, **(base | overrides))


@pytest.fixture(scope="session")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app with real weights for the API tests (loading it once keeps the suite fast)."""
    data_dir = tmp_path_factory.mktemp("data")
    with TestClient(create_app(lite0_settings(data_dir))) as test_client:
        yield test_client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator["RedisServer"]:
    """A real redis-server on a free loopback port, killed after the test."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path)
    yield server
    server.kill()


@pytest.fixture(scope="session", autouse=True)
def _embedded_milvus_stopped() -> Iterator[None]:
    """Milvus Lite stops its embedded servers at exit, logging to a stream pytest has closed
    by then: stop them while the session still has its logging."""
    yield
    manager = sys.modules.get("milvus_lite.server_manager")
    if manager is not None:
        manager.server_manager_instance.release_all()

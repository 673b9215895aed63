"""The core install: with every extra's modules hidden (tests/without_optional), the service
serves classify, embed and search, and each feature of a missing extra says which extra."""

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from service import extras
from tests.e2e.server import Server, start_server
from tests.photos import jpeg

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]
HIDDEN = ROOT / "tests" / "without_optional"
ABSENT = ",".join(module for modules in extras.MODULES.values() for module in modules)


def without_extras(env: dict[str, str] | None = None) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(HIDDEN), os.environ.get("PYTHONPATH")]))
    return (env or {}) | {"PYTHONPATH": path, "WITHOUT_PACKAGES": ABSENT}


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The page at /ui is on by default; the default must do without Gradio, not fail.
    server = start_server(
        tmp_path_factory.mktemp("lean"), without_extras(), unset=["RESNET_SERVE_UI"]
    )
    yield server
    server.stop()


def test_the_core_serves_classify_embed_and_search(lean: Server) -> None:
    photo = {"file": ("cup.jpg", jpeg("coffee"))}
    with httpx.Client(base_url=lean.url, timeout=60) as http:
        assert http.post("/v1/classify", files=photo).status_code == 200
        assert http.post("/v1/embed", files=photo).status_code == 200
        assert http.put("/v1/items/cup", files=photo).status_code == 201
        found = http.post("/v1/search", files=photo, params={"k": 1})
        assert found.status_code == 200
        assert [hit["id"] for hit in found.json()["results"]] == ["cup"]


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [("POST", "/v1/explain", "explain"), ("GET", "/ui", "ui"), ("GET", "/ui/config", "ui")],
)
def test_a_feature_of_a_missing_extra_answers_503_naming_it(
    lean: Server, method: str, path: str, extra: str
) -> None:
    files = {"file": ("cup.jpg", jpeg("coffee"))} if method == "POST" else None
    answer = httpx.request(method, f"{lean.url}{path}", files=files, timeout=60)
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "unavailable"
    assert f"pip install 'resnet-serve[{extra}]'" in error["message"]


@pytest.mark.parametrize(
    ("setting", "extra"),
    [
        ({"RESNET_SERVE_UI": "true"}, "ui"),
        ({"RESNET_SERVE_BACKEND": "openvino"}, "openvino"),
        ({"RESNET_SERVE_PRECISION": "int8", "RESNET_SERVE_BACKEND": "auto"}, "openvino"),
        ({"RESNET_SERVE_JPEG_DECODE": "device"}, "gpu"),
        ({"RESNET_SERVE_GRPC_PORT": "8001"}, "grpc"),
        ({"RESNET_SERVE_INDEX_ENGINE": "milvus"}, "milvus"),
    ],
)
def test_a_setting_that_asks_for_a_missing_extra_stops_the_start(
    setting: dict[str, str], extra: str
) -> None:
    env = os.environ | without_extras(setting)
    finished = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2  # a usage error: nothing was started
    assert f"pip install 'resnet-serve[{extra}]'" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_core_dependencies_hold_no_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {Requirement(line).name for line in project["dependencies"]}
    optional = project["optional-dependencies"]
    for extra in extras.MODULES:
        held = {Requirement(line).name for line in optional[extra]}
        assert held and not held & core, extra
    (full,) = (Requirement(line) for line in optional["full"])
    assert full.extras == {"openvino", "explain", "ui", "gpu", "grpc", "finetune", "otel"}

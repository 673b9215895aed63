"""A first start with `auto` and an empty data directory, as real processes (HTTP workers and
a model worker, which runs the search): ready at once, and Ctrl-C while the backend search
runs leaves nothing a later start would trust."""

import signal
from pathlib import Path

import httpx
import pytest

from loadtest.common.processes import readiness
from tests.e2e.server import start_server
from tests.photos import jpeg

pytestmark = pytest.mark.e2e

AUTO = {
    "RESNET_SERVE_BACKEND": "auto",
    "RESNET_SERVE_PRECISION": "auto",
    "RESNET_SERVE_WORKERS": "2",
}


def test_ctrl_c_during_the_background_search_exits_cleanly(tmp_path: Path) -> None:
    server = start_server(tmp_path, AUTO)
    try:
        # Each HTTP worker answers 503 until it reaches the model: ask until one says ready.
        ready = readiness(server.url)
        assert ready["backend"] == "torch-cpu-fp32"
        assert ready["backend_search"].startswith("searching for a faster backend")
        answer = httpx.post(f"{server.url}/v1/classify", files={"file": ("c.jpg", jpeg("coffee"))})
        assert answer.json()["predictions"][0]["label"] == "espresso"
    finally:
        assert server.stop(signal.SIGINT, timeout_s=60) == 0
    log = server.log()
    assert "searching for a faster backend in the background" in log
    assert "Traceback" not in log and "terminate called" not in log  # no abort at exit
    assert "stopped: the service is shutting down" in log  # the search ended, not abandoned
    models = tmp_path / "data" / "models"
    assert not list(models.glob("choice-*.json"))  # no decision from an unfinished search
    for artefacts in models.glob("openvino-*"):
        if not artefacts.name.endswith(".tmp"):  # what a later start reads is whole
            assert (artefacts / "model.xml").exists() and (artefacts / "model.bin").exists()

    again = start_server(tmp_path, AUTO)  # searches afresh, trusting nothing half-made
    try:
        ready = readiness(again.url)
        assert ready["backend_search"].startswith("searching for a faster backend")
    finally:
        again.stop(signal.SIGKILL)

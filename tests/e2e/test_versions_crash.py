"""kill -9 of a real server while a version re-embeds, and while it is made live: the
re-embedding resumes without redoing finished items, and exactly one version is live."""

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.common.images import unique_jpegs
from service.versions import reembedding
from tests.e2e.server import Server, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ITEMS = 100
CHUNK = reembedding._CHUNK  # a watermark is written after each chunk of items re-embedded


def models(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The `resnet-serve models` command against the server."""
    return subprocess.run(
        [sys.executable, "-m", "service", "models", "--url", server.url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def version(server: Server, name: str) -> dict[str, Any]:
    listed = httpx.get(f"{server.url}/v1/models", timeout=30).json()
    found: dict[str, Any] = next(v for v in listed["versions"] if v["name"] == name)
    return found


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_kill_9_during_re_embedding_and_during_a_switch(tmp_path: Path) -> None:
    server = start_server(tmp_path, {})
    images = unique_jpegs(tag="versions-crash")
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for n in range(ITEMS):
            assert (
                http.put(f"/v1/items/i{n}", files={"file": ("x.jpg", next(images))}).status_code
                == 201
            )
    added = models(server, "add", "v2", "random")
    assert added.returncode == 0, added.stderr
    wait_until(  # past the first chunk: its watermark is on disk
        lambda: (version(server, "v2").get("progress") or {}).get("done", 0) > CHUNK,
        120,
        "the first chunk re-embedded",
    )
    server.stop(signal.SIGKILL)

    server = start_server(tmp_path, {})
    wait_until(lambda: version(server, "v2")["state"] == "ready", 180, "v2 ready again")
    redone = version(server, "v2")["progress"]["done"]
    assert redone <= ITEMS - CHUNK  # the finished chunk is not embedded again
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for n in range(ITEMS):
            answer = http.get(f"/v1/items/i{n}/similar", params={"version": "v2", "k": 1})
            assert answer.status_code == 200, (n, answer.text)

    # kill -9 as the switch happens: exactly one version is live afterwards.
    switching = threading.Thread(target=models, args=(server, "activate", "v2"))
    switching.start()
    time.sleep(0.05)
    server.stop(signal.SIGKILL)
    switching.join()
    recorded = json.loads((tmp_path / "data" / "versions.json").read_text())
    assert recorded["live"] in ("default", "v2")
    server = start_server(tmp_path, {})
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answer = http.post("/v1/classify", files={"file": ("x.jpg", next(images))})
            assert answer.headers["x-model-version"] == recorded["live"]
        assert json.loads(models(server, "list").stdout)["live"] == recorded["live"]
    finally:
        server.stop()

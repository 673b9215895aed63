"""Model versions with HTTP workers: the first model worker hosts them, the index worker
holds each one's index, and both HTTP workers switch with the live one. A kill -9 of the
model worker and of the index worker leaves the live version serving again."""

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.server import start_server
from tests.e2e.test_workers import WORKERS, wait_ready, workers
from tests.photos import PHOTO_NAMES, encode, photo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def upload(name: str) -> dict[str, Any]:
    return {"file": (f"{name}.jpg", encode(photo(name)), "image/jpeg")}


def wait_for(http: httpx.Client, name: str, state: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = http.get("/v1/models")
        if answer.status_code == 200:
            found = next(v for v in answer.json()["versions"] if v["name"] == name)
            if found["state"] == state:
                return
            assert found["state"] != "failed", found
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def embedding(http: httpx.Client, name: str, version: str) -> np.ndarray:
    answer = http.post("/v1/embed", params={"version": version}, files=upload(name))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == version
    return np.array(answer.json()["embedding"])


def answered_by(http: httpx.Client, times: int = 8) -> set[str]:
    """Which versions answered `times` classifications (spread over both HTTP workers: each
    request is a new connection)."""
    seen = set()
    for _ in range(times):
        answer = httpx.post(f"{http.base_url}/v1/classify", files=upload("coffee"), timeout=60)
        assert answer.status_code == 200, answer.text
        seen.add(answer.headers["x-model-version"])
    return seen


def eventually(condition: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_versions_in_the_first_model_worker_switch_every_http_worker(tmp_path: Path) -> None:
    server = start_server(tmp_path, WORKERS)
    try:
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for name in PHOTO_NAMES:
                assert http.put(f"/v1/items/{name}", files=upload(name)).status_code == 201
            before = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]

            added = http.post("/v1/models", json={"name": "v2", "weights": "random"})
            assert added.status_code == 202, added.text
            assert http.post("/v1/models", json={"name": "v2", "weights": "x"}).status_code == 409
            wait_for(http, "v2", "ready")

            # Pinned to v2: the query vector and the index searched are both v2's.
            eventually(
                lambda: (
                    http.post(
                        "/v1/embed", params={"version": "v2"}, files=upload("coffee")
                    ).status_code
                    == 200
                ),
                "every HTTP worker sees v2 ready",
            )
            query = embedding(http, "coffee", "v2")
            hits = http.post("/v1/search", params={"version": "v2"}, files=upload("coffee"))
            assert hits.headers["x-model-version"] == "v2"
            assert len(hits.json()["results"]) == len(PHOTO_NAMES)
            for hit in hits.json()["results"]:
                item = embedding(http, hit["id"], "v2")
                assert hit["score"] == pytest.approx(float(query @ item), abs=2e-3)

            # A write to the live version reaches v2 (it follows in the model worker).
            assert http.put("/v1/items/late", files=upload("rocket")).status_code == 201
            eventually(
                lambda: (
                    http.get("/v1/items/late/similar", params={"version": "v2"}).status_code == 200
                ),
                "the late item in v2",
            )

            assert http.post("/v1/models/v2/activate").json()["live"] == "v2"
            assert answered_by(http) == {"v2"}  # both HTTP workers, from the switch on
            after = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]
            assert after != before

            # kill -9 of the model worker, then of the index worker: v2 serves again.
            for role in ("model", "index"):
                (victim,) = workers(server, role)
                victim.send_signal(signal.SIGKILL)
                eventually(
                    lambda: http.post("/v1/search", files=upload("coffee")).status_code == 200,
                    f"search after the {role} worker's restart",
                )
                searched = http.post("/v1/search", files=upload("coffee"))
                assert searched.headers["x-model-version"] == "v2"
                assert searched.json()["results"][0]["id"] == "coffee"
            assert http.get("/v1/models").json()["live"] == "v2"
            wait_for(http, "default", "ready")  # loaded again beside v2, following it

            started = time.monotonic()
            assert http.post("/v1/models/default/activate").json()["live"] == "default"
            assert time.monotonic() - started < 1.0
            assert answered_by(http) == {"default"}
            again = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]
            assert again == before

            assert http.delete("/v1/models/v2").status_code == 204
            gone = http.post("/v1/classify", params={"version": "v2"}, files=upload("coffee"))
            assert gone.status_code == 422, gone.text
        assert server.stop() == 0
    finally:
        server.stop(signal.SIGKILL)

"""Overload and a stuck model, through the ASGI app: 429 at the door, /readyz red on a hang."""

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.app import api_routes, create_app
from service.http.admission import model_routes
from service.model.runtime import ModelRuntime
from service.routes.deps import get_pipeline, pinned_inspector, pinned_pipeline
from tests.conftest import lite0_settings
from tests.photos import jpeg
from tests.service.test_api import assert_error, classify


def unique(data: bytes) -> bytes:
    return data + uuid.uuid4().bytes


def test_requests_for_the_model_are_the_ones_admitted_at_the_door() -> None:
    routes = api_routes()
    marked = {(method, route.path) for route in model_routes(routes) for method in route.methods}
    assert marked == {
        ("POST", "/v1/classify"),
        ("POST", "/v1/classify/batch"),
        ("POST", "/v1/embed"),
        ("POST", "/v1/search"),
        ("POST", "/v1/similarity"),
        ("PUT", "/v1/items/{item_id:item_id}"),
        ("POST", "/v1/items/batch"),
        ("POST", "/v2/models/{model}/infer"),
        ("POST", "/v2/models/{model}/versions/{version}/infer"),
    }
    # A new route that sends images to the model and forgets the mark fails here: every
    # POST or PUT that takes the pipeline is marked, but the inspector's (explanations and
    # feature maps: their own limit).
    for route in routes:
        if isinstance(route, APIRoute) and route.methods & {"POST", "PUT"}:
            takes = {dependency.call for dependency in route.dependant.dependencies}
            pipeline = takes & {get_pipeline, pinned_pipeline}
            if pipeline and pinned_inspector not in takes:
                assert route in model_routes([route]), route.path


def test_an_image_past_the_latency_target_gets_429_before_any_work(
    tmp_path: Path, stuck_model: threading.Event
) -> None:
    # 1 ms: once a batch has been timed, no image can be answered that fast behind others.
    settings = lite0_settings(tmp_path, target_latency_ms=1, max_batch_size=1)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(3) as pool:
        assert classify(client, unique(jpeg("coffee")), top_k=1).status_code == 200
        stuck_model.clear()
        # One held in the model and one queued behind it: until a full batch waits, the
        # model is never refused work, whatever the target says.
        held = []
        for reached in (
            'batcher_queue_wait_seconds_count{version="default"} 2.0',
            'batcher_queue_depth{version="default"} 1.0',
        ):
            held.append(pool.submit(classify, client, unique(jpeg("chelsea"))))
            wait_for_metric(client, reached)  # one at a time: each reaches the model first
        refused = classify(client, unique(jpeg("coffee")), top_k=1)
        assert_error(refused, 429, "overloaded")
        assert "target" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        metrics = client.get("/metrics").text
        assert 'batcher_rejected_total{reason="latency_target",version="default"} 1.0' in metrics
        # Refused at the door, the body unread; reads are not admission-bound.
        assert client.get("/v1/index").status_code == 200
        stuck_model.set()
        assert [answer.result(timeout=30).status_code for answer in held] == [200] * 2


def wait_for_metric(client: TestClient, line: str) -> None:
    deadline = time.monotonic() + 10
    while line not in client.get("/metrics").text:
        assert time.monotonic() < deadline, f"never saw {line!r} in /metrics"
        time.sleep(0.02)


@pytest.fixture
def stuck_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Batches hang while the event is clear (the warm-up before the app starts does not)."""
    release = threading.Event()
    release.set()
    real = ModelRuntime.predict_batch

    def predict_batch(self: ModelRuntime, items: Sequence[object]) -> list[object]:
        release.wait(30)
        return real(self, items)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRuntime, "predict_batch", predict_batch)
    yield release
    release.set()


def test_a_hung_batch_turns_readiness_red_until_it_ends(
    tmp_path: Path, stuck_model: threading.Event
) -> None:
    settings = lite0_settings(tmp_path, watchdog_s=0.3)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(1) as pool:
        assert client.get("/readyz").status_code == 200
        stuck_model.clear()
        stuck = pool.submit(classify, client, unique(jpeg("chelsea")))
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "readiness stayed green over a hung batch"
            time.sleep(0.05)
        assert_error(ready, 503, "not_ready")
        assert "watchdog" in ready.json()["error"]["message"]
        assert_error(classify(client, unique(jpeg("coffee"))), 503, "not_ready")
        assert 'batcher_hung{version="default"} 1.0' in client.get("/metrics").text
        stuck_model.set()
        assert stuck.result(timeout=30).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert 'batcher_hangs_total{version="default"} 1.0' in client.get("/metrics").text


def test_each_request_is_admitted_against_the_queue_of_the_version_that_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pinned request (`?version=`) is weighed against its version's queue at the door: a
    full version refuses it before its body is read while another version serves. A corrupt
    body tells the two apart: admitted, it is read and fails to decode (4xx); refused at
    the door, it is a 429."""
    held: list[str] = []  # the fingerprint of the version whose batches hang
    release = threading.Event()
    real = ModelRuntime.predict_batch

    def predict_batch(self: ModelRuntime, items: Sequence[object]) -> list[object]:
        if self.spec.fingerprint in held:
            release.wait(30)
        return real(self, items)  # type: ignore[arg-type]

    monkeypatch.setattr(ModelRuntime, "predict_batch", predict_batch)
    settings = lite0_settings(tmp_path, target_latency_ms=1, max_batch_size=1)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(4) as pool:
        assert client.post("/v1/models", json={"name": "v2", "weights": "random"}).status_code
        fingerprints = {
            name: wait_for_state(client, name, state)["fingerprint"]
            for name, state in (("v2", "ready"), ("default", "live"))
        }
        for full, idle in (("default", "v2"), ("v2", "default")):
            for name in (full, idle):  # a timed batch each: the target applies from now on
                assert classify(client, unique(jpeg("coffee")), version=name).status_code == 200
            held[:] = [fingerprints[full]]
            release.clear()
            # Images for the held version until its door refuses: one in the model and one
            # queued behind it make a full batch waiting.
            waiting: list[Future[httpx.Response]] = []
            deadline = time.monotonic() + 60
            while (probe := classify(client, b"not an image", version=full)).status_code != 429:
                assert time.monotonic() < deadline, f"{full} never refused at the door"
                if len(waiting) < 4:
                    waiting.append(
                        pool.submit(classify, client, unique(jpeg("chelsea")), version=full)
                    )
                time.sleep(0.05)
            # Back no sooner than Retry-After (earlier, the door would hold it, then refuse).
            come_back_at = time.monotonic() + int(probe.headers["retry-after"])
            served = classify(client, unique(jpeg("coffee")), version=idle)
            assert served.status_code == 200 and served.headers["x-model-version"] == idle
            assert 400 <= classify(client, b"not an image", version=idle).status_code < 429
            release.set()
            statuses = [answer.result(timeout=60).status_code for answer in waiting]
            assert set(statuses) <= {200, 429} and 200 in statuses, statuses
            time.sleep(max(0.0, come_back_at - time.monotonic()))
        held.clear()


def wait_for_state(client: TestClient, name: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        version = next(v for v in client.get("/v1/models").json()["versions"] if v["name"] == name)
        if version["state"] == state:
            return dict(version)
        assert version["state"] != "failed" and time.monotonic() < deadline, version
        time.sleep(0.05)

"""Model versions in one process: add one beside the live one, watch it re-embed, pin
requests to it, make it live, go back, remove it; refusals; the key; a restart."""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loadtest.common.images import unique_jpegs
from service.app import create_app
from tests.conftest import lite0_settings
from tests.finetuned import digits_head
from tests.machine_speed import seconds_for_one_new_image
from tests.photos import PHOTO_NAMES, encode, photo

pytestmark = pytest.mark.slow


def upload(name: str) -> dict[str, Any]:
    return {"file": (f"{name}.jpg", encode(photo(name)), "image/jpeg")}


def wait_for_state(
    client: TestClient, name: str, state: str, timeout_s: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        listed = client.get("/v1/models").json()
        version = next(v for v in listed["versions"] if v["name"] == name)
        if version["state"] == state:
            return version
        assert version["state"] != "failed", version
        assert time.monotonic() < deadline, version
        time.sleep(0.1)


def embedding(client: TestClient, name: str, version: str) -> np.ndarray:
    answer = client.post("/v1/embed", params={"version": version}, files=upload(name))
    assert answer.headers["x-model-version"] == version
    return np.array(answer.json()["embedding"])


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real second version: lite0 with a head fine-tuned on digits (labels "0" to "9")."""
    return str(digits_head(tmp_path_factory.mktemp("finetuned"), per_class=10))


DIGITS = {str(d) for d in range(10)}


def labels(answer: Any) -> set[str]:
    return {p["label"] for p in answer.json()["predictions"]}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(lite0_settings(tmp_path / "data"))) as client:
        for name in PHOTO_NAMES:
            assert client.put(f"/v1/items/{name}", files=upload(name)).status_code == 201
        yield client


def test_a_version_is_added_re_embedded_pinned_made_live_rolled_back_and_removed(
    client: TestClient, digits: str
) -> None:
    before = client.post("/v1/classify", files=upload("coffee"))
    assert before.headers["x-model-version"] == "default"
    assert not labels(before) & DIGITS

    added = client.post("/v1/models", json={"name": "v2", "weights": digits})
    assert added.status_code == 202, added.text
    assert added.json()["state"] == "loading"
    ready = wait_for_state(client, "v2", "ready")
    assert ready["fingerprint"] != client.get("/readyz").json()["fingerprint"]

    # Pinned: the query vector and the index it searches are both v2's.
    query = embedding(client, "coffee", "v2")
    hits = client.post("/v1/search", params={"version": "v2"}, files=upload("coffee")).json()
    for hit in hits["results"]:
        item = embedding(client, hit["id"], "v2")
        assert hit["score"] == pytest.approx(float(query @ item), abs=2e-3)
    live_hits = client.post("/v1/search", files=upload("coffee")).json()["results"]
    assert live_hits[0]["id"] == "coffee" and live_hits[0]["score"] > 0.99

    # An item written now reaches v2 too (it follows the live version).
    client.put("/v1/items/late", files=upload("rocket"))
    deadline = time.monotonic() + 30
    while client.get("/v1/items/late/similar", params={"version": "v2"}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # A deletion reaches it too (no label marks it: found by id).
    assert client.delete("/v1/items/late").status_code == 204
    deadline = time.monotonic() + 30
    while client.get("/v1/items/late/similar", params={"version": "v2"}).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    switched = client.post("/v1/models/v2/activate")
    assert switched.status_code == 200 and switched.json()["live"] == "v2"
    after = client.post("/v1/classify", files=upload("coffee"))
    assert after.headers["x-model-version"] == "v2"
    assert labels(after) <= DIGITS  # the fine-tuned head's own labels

    one_image_s = seconds_for_one_new_image(client)
    started = time.monotonic()
    assert client.post("/v1/models/default/activate").json()["live"] == "default"
    # Going back is a pointer swap: under a second, more only on a machine loaded so much
    # that one image takes over 100 ms.
    assert time.monotonic() - started < max(1.0, 10 * one_image_s)
    again = client.post("/v1/classify", files=upload("coffee"))
    assert again.headers["x-model-version"] == "default"
    assert again.json()["predictions"] == before.json()["predictions"]
    metrics = client.get("/metrics").text
    assert 'model_version_responses_total{status="200",version="v2"}' in metrics
    assert 'model_version_request_seconds_count{route="/v1/classify",version="v2"}' in metrics
    # Each version's batcher reports on the same metrics, by its own label.
    batches = {
        sample.labels["version"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "batcher_batch_size_count"
    }
    assert batches.get("v2", 0) > 0 and batches.get("default", 0) > 0, batches

    assert client.delete("/v1/models/default").status_code == 409  # live, and the default
    assert client.delete("/v1/models/v2").status_code == 204
    assert [v["name"] for v in client.get("/v1/models").json()["versions"]] == ["default"]
    gone = client.post("/v1/classify", params={"version": "v2"}, files=upload("coffee"))
    assert gone.status_code == 422


def test_a_switch_under_load_fails_nothing_and_labels_change_exactly_at_it(
    client: TestClient, digits: str
) -> None:
    client.post("/v1/models", json={"name": "v2", "weights": digits})
    wait_for_state(client, "v2", "ready")
    images = unique_jpegs(tag="switch")
    answers: list[tuple[float, float, bytes, Any]] = []
    stop = threading.Event()
    taking = threading.Lock()  # one generator, four threads

    def classify() -> None:
        while not stop.is_set():
            with taking:
                image = next(images)
            started = time.monotonic()
            answer = client.post("/v1/classify", files={"file": ("x.jpg", image, "image/jpeg")})
            answers.append((started, time.monotonic(), image, answer))

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(classify) for _ in range(4)]
        deadline = time.monotonic() + 60
        while len(answers) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        asked = time.monotonic()
        assert client.post("/v1/models/v2/activate").status_code == 200
        answered = time.monotonic()
        while len([a for a in answers if a[0] > answered]) < 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stop.set()
        for each in running:
            each.result()
    assert [a[3].status_code for a in answers] == [200] * len(answers)
    for started, finished, image, answer in answers:
        version = answer.headers["x-model-version"]
        if finished < asked:
            assert version == "default"
        if started > answered:
            assert version == "v2"
        # ImageNet labels from default, digits from v2: never one model's labels for the other.
        assert (labels(answer) <= DIGITS) == (version == "v2")
        # What that version answers for this image, asked again pinned: the same labels.
        pinned = client.post(
            "/v1/classify", params={"version": version}, files={"file": ("x.jpg", image)}
        )
        assert pinned.json()["predictions"] == answer.json()["predictions"]


def test_bad_versions_are_refused_and_the_live_one_is_untouched(
    client: TestClient, tmp_path: Path
) -> None:
    missing = client.post("/v1/models", json={"name": "v3", "weights": "/no/such/file.pth"})
    assert missing.status_code == 422 and "no such file" in missing.json()["error"]["message"]
    assert (
        client.post("/v1/models", json={"name": "Bad Name", "weights": "random"}).status_code == 422
    )
    assert (
        client.post("/v1/models", json={"name": "default", "weights": "random"}).status_code == 409
    )
    assert (
        client.post("/v1/models", json={"name": "v4", "weights": "random", "x": 1}).status_code
        == 422
    )
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a state dict")
    assert client.post("/v1/models", json={"name": "v5", "weights": str(broken)}).status_code == 202
    deadline = time.monotonic() + 60
    while True:
        v5 = next(v for v in client.get("/v1/models").json()["versions"] if v["name"] == "v5")
        if v5["state"] == "failed":
            break
        assert time.monotonic() < deadline, v5
        time.sleep(0.1)
    assert v5["reason"]
    assert client.post("/v1/models/v5/activate").status_code == 409
    assert client.get("/v1/models").json()["live"] == "default"
    assert client.post("/v1/classify", files=upload("coffee")).status_code == 200


def test_a_version_that_would_not_fit_in_memory_is_refused(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.versions.memory.available_memory_bytes", lambda: 1024)
    refused = client.post("/v1/models", json={"name": "big", "weights": "random"})
    assert refused.status_code == 507 and "MiB" in refused.json()["error"]["message"]
    assert [v["name"] for v in client.get("/v1/models").json()["versions"]] == ["default"]


def test_the_api_key_guards_model_management(tmp_path: Path) -> None:
    settings = lite0_settings(tmp_path / "data", api_key="k3y")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models").status_code == 401
        assert (
            client.post("/v1/models", json={"name": "v2", "weights": "random"}).status_code == 401
        )
        assert client.get("/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200


def test_the_live_version_and_the_others_survive_a_restart(tmp_path: Path) -> None:
    settings = lite0_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        client.put("/v1/items/coffee", files=upload("coffee"))
        client.post("/v1/models", json={"name": "v2", "weights": "random"})
        wait_for_state(client, "v2", "ready")
        client.post("/v1/models/v2/activate")
    with TestClient(create_app(settings)) as client:
        assert (
            client.post("/v1/classify", files=upload("coffee")).headers["x-model-version"] == "v2"
        )
        default = wait_for_state(client, "default", "ready")
        assert default["progress"] is None or default["progress"]["done"] == 0  # nothing redone
        listed = client.get("/v1/models").json()
        assert listed["live"] == "v2"
        hits = client.post("/v1/search", files=upload("coffee")).json()["results"]
        assert hits[0]["id"] == "coffee" and hits[0]["score"] > 0.99


def test_writes_that_resolved_the_old_version_still_reach_the_new_live_one(
    tmp_path: Path,
) -> None:
    """A request resolves its version once: a write or a deletion that did so just before
    the switch lands in the old version's index after it, and must not be lost to the new
    live version. (The old one forwards them for the request timeout: 2 s here.)"""
    settings = lite0_settings(tmp_path / "data", request_timeout_s=2.0)
    with TestClient(create_app(settings)) as client:
        for name in ("coffee", "chelsea"):
            assert client.put(f"/v1/items/{name}", files=upload(name)).status_code == 201
        client.post("/v1/models", json={"name": "v2", "weights": "random"})
        wait_for_state(client, "v2", "ready")
        old = client.app.state.versions.serving(None)  # type: ignore[attr-defined]
        image = encode(photo("rocket"))
        inference = client.portal.call(old.pipeline.run, image)  # type: ignore[union-attr]
        assert client.post("/v1/models/v2/activate").json()["live"] == "v2"
        late_put = (old.index.put, "late", inference.outputs.embedding, {"from": "old"}, image)
        client.portal.call(*late_put)  # type: ignore[union-attr]
        client.portal.call(old.index.delete, "chelsea")  # type: ignore[union-attr]
        assert client.put("/v1/items/new", files=upload("astronaut")).status_code == 201
        deadline = time.monotonic() + 30
        while client.get("/v1/items/late").status_code != 200 or (
            client.get("/v1/items/chelsea").status_code != 404
        ):
            assert time.monotonic() < deadline, "a late write never reached the live version"
            time.sleep(0.1)
        found = client.get("/v1/items/late")
        assert found.json()["metadata"] == {"from": "old"}
        hits = client.post("/v1/search", files=upload("rocket")).json()["results"]
        assert hits[0]["id"] == "late" and hits[0]["score"] > 0.99  # embedded again by v2
        # Written to v2 after the switch: kept, and followed by the old version after its grace.
        assert client.get("/v1/items/new").status_code == 200
        while client.get("/v1/items/new/similar", params={"version": "default"}).status_code != 200:
            assert time.monotonic() < deadline, "the old version never followed the new one"
            time.sleep(0.1)

"""The HTTP API through the ASGI app: responses, correctness with real weights, bad input."""

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from loadtest.common.scrape import parse_metrics
from service.app import create_app
from tests.conftest import lite0_settings
from tests.photos import encode, jpeg, photo, resized_jpeg
from tests.service.test_images import png_header_only

CAT_CLASSES = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


def classify(client: TestClient, data: bytes, **params: object) -> httpx.Response:
    return client.post("/v1/classify", files={"file": ("x.jpg", data, "image/jpeg")}, params=params)


def embedding(client: TestClient, data: bytes) -> np.ndarray:
    response = client.post("/v1/embed", files={"file": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return np.array(response.json()["embedding"])


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.fixture
def still_serving(client: TestClient) -> Iterator[None]:
    """After a bad request, the service must still answer a good one."""
    yield
    response = classify(client, jpeg("coffee"), top_k=1)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["label"] == "espresso"


# --- correctness with the real EfficientNet-Lite0 weights -------------------------------


def unique(data: bytes) -> bytes:
    """Bytes no earlier request sent (trailing bytes after the JPEG end marker are ignored)."""
    return data + uuid.uuid4().bytes


def test_coffee_is_espresso(client: TestClient) -> None:
    response = classify(client, unique(jpeg("coffee")), top_k=3)
    assert response.status_code == 200
    body = response.json()
    assert body["cache"] == "miss" and response.headers["x-cache"] == "miss"
    assert body["model"] == "tf_efficientnet_lite0" and body["weights"] == "lite0-package"
    assert body["warnings"] == []
    assert body["predictions"][0]["label"] == "espresso"
    assert len(body["predictions"]) == 3
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert {"decode", "queue", "inference", "total"} <= set(body["timings_ms"])
    assert body["batch_size"] >= 1


def test_chelsea_is_a_cat(client: TestClient) -> None:
    top = classify(client, jpeg("chelsea"), top_k=1).json()["predictions"][0]
    assert top["label"] in CAT_CLASSES


def test_embedding_is_stable_under_resizing_and_separates_unrelated_photos(
    client: TestClient,
) -> None:
    coffee = embedding(client, jpeg("coffee"))
    assert coffee.shape == (1280,) and np.linalg.norm(coffee) == pytest.approx(1, abs=1e-4)
    assert coffee @ embedding(client, resized_jpeg("coffee", 0.8)) > 0.9
    for unrelated in ("chelsea", "rocket", "astronaut"):
        assert coffee @ embedding(client, jpeg(unrelated)) < 0.5


def test_base64_json_gives_the_same_answer_as_multipart(client: TestClient) -> None:
    data = jpeg("chelsea")
    as_json = client.post("/v1/classify", json={"image": base64.b64encode(data).decode()})
    assert as_json.status_code == 200
    assert as_json.json()["predictions"] == classify(client, data).json()["predictions"]
    data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert client.post("/v1/embed", json={"image": data_url}).status_code == 200


def test_batch_keeps_order_and_fails_only_the_bad_item(client: TestClient) -> None:
    files = [
        ("files", ("coffee.jpg", jpeg("coffee"), "image/jpeg")),
        ("files", ("broken.jpg", b"not an image", "image/jpeg")),
        ("files", ("cat.png", encode(photo("chelsea"), "PNG"), "image/png")),
    ]
    response = client.post("/v1/classify/batch", files=files, params={"top_k": 2})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["coffee.jpg", "broken.jpg", "cat.png"]
    assert results[0]["predictions"][0]["label"] == "espresso"
    assert results[1]["predictions"] is None and results[1]["error"]["code"] == "invalid_input"
    assert results[2]["predictions"][0]["label"] in CAT_CLASSES


def test_top_k_can_ask_for_every_class(client: TestClient) -> None:
    predictions = classify(client, jpeg("rocket"), top_k=1000).json()["predictions"]
    assert len(predictions) == 1000
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-3)


# --- health, metrics, docs ----------------------------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["embedding_dim"] == 1280
    assert ready["device"] == "cpu" and len(ready["fingerprint"]) == 16
    # The default target is loose: batches run at the configured size.
    assert ready["batch_limit"] == ready["max_batch_size"]


def test_the_answer_says_its_queue_inference_and_total_time(client: TestClient) -> None:
    def run_seconds() -> float:
        metrics = parse_metrics(client.get("/metrics").text)
        return sum(v for (name, _), v in metrics.items() if name == "batcher_run_seconds_sum")

    before = run_seconds()
    answer = classify(client, jpeg("coffee") + uuid.uuid4().bytes)  # unique: the model runs
    queue, inference, total = (
        float(answer.headers[name]) for name in ("x-queue-time", "x-inference-time", "x-total-time")
    )
    assert queue >= 0 and inference > 0 and queue + inference <= total
    # The same forward pass the batcher's histogram measured (this request's batch alone).
    assert inference == pytest.approx(1000 * (run_seconds() - before), abs=0.01)
    classify(client, jpeg("coffee"))
    hit = classify(client, jpeg("coffee"))  # the same bytes again: from the cache
    assert hit.headers["x-cache"] == "hit" and "x-inference-time" not in hit.headers


def test_metrics_expose_batches_and_requests(client: TestClient) -> None:
    classify(client, jpeg("coffee"))
    text = client.get("/metrics").text
    assert "batcher_batch_size_count" in text and "batcher_queue_depth" in text
    assert 'http_requests_total{method="POST",route="/v1/classify",status="200"}' in text


def test_openapi_documents_both_body_kinds(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_random_weights_are_flagged_in_every_response(tmp_path: Path) -> None:
    settings = lite0_settings(tmp_path, weights="random")
    with TestClient(create_app(settings)) as random_client:
        response = classify(random_client, jpeg("coffee"))
        assert response.json()["weights"] == "random"
        assert "RANDOM WEIGHTS" in response.json()["warnings"][0]
        assert "RANDOM WEIGHTS" in random_client.get("/readyz").json()["warnings"][0]


# --- bad input: a clear 4xx and the service keeps serving ---------------------------------


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 422, "invalid_input"),
        (jpeg("coffee")[:3000], 422, "invalid_input"),
        (b"GIF89a but not really", 422, "invalid_input"),
        (b"\x00" * 5000, 422, "invalid_input"),
        (b"x" * 1_000_001, 413, "payload_too_large"),
        (png_header_only(30_000, 30_000), 413, "payload_too_large"),
        (png_header_only(3_000, 3_000), 413, "payload_too_large"),  # over the 4 MP test limit
    ],
    ids=["empty", "truncated", "fake-gif", "zeros", "over-bytes", "bomb", "over-pixels"],
)
def test_bad_uploads(client: TestClient, data: bytes, status: int, code: str) -> None:
    assert_error(classify(client, data), status, code)


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("top_k", ["0", "1001", "-3", "five", "2.5"])
def test_bad_top_k(client: TestClient, top_k: str) -> None:
    assert_error(classify(client, jpeg("coffee"), top_k=top_k), 422, "invalid_input")


@pytest.mark.usefixtures("still_serving")
def test_wrong_content_types(client: TestClient) -> None:
    raw = client.post(
        "/v1/classify", content=jpeg("coffee"), headers={"content-type": "image/jpeg"}
    )
    assert_error(raw, 415, "unsupported_media_type")
    text_part = client.post("/v1/classify", files={"file": ("a.txt", b"hello", "text/plain")})
    assert_error(text_part, 415, "unsupported_media_type")
    batch_as_json = client.post("/v1/classify/batch", json={"images": []})
    assert_error(batch_as_json, 415, "unsupported_media_type")


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    "body",
    [{"image": "***not base64***"}, {"image": 42}, {"picture": "AAAA"}, ["image"]],
    ids=["bad-base64", "not-a-string", "wrong-field", "not-an-object"],
)
def test_bad_json_bodies(client: TestClient, body: object) -> None:
    assert_error(client.post("/v1/classify", json=body), 422, "invalid_input")


@pytest.mark.usefixtures("still_serving")
def test_malformed_json_and_multipart(client: TestClient) -> None:
    broken_json = client.post(
        "/v1/embed", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(broken_json, 400, "bad_request")
    missing_field = client.post("/v1/classify", files={"wrong": ("a.jpg", jpeg("coffee"))})
    assert_error(missing_field, 422, "invalid_input")
    broken_multipart = client.post(
        "/v1/classify",
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert broken_multipart.status_code in (400, 422)
    assert "error" in broken_multipart.json()


@pytest.mark.usefixtures("still_serving")
def test_too_many_batch_files(client: TestClient) -> None:
    files = [("files", (f"{i}.jpg", jpeg("coffee"), "image/jpeg")) for i in range(5)]
    response = client.post("/v1/classify/batch", files=files)
    assert_error(response, 400, "bad_request")
    assert "4" in response.json()["error"]["message"]


@pytest.mark.usefixtures("still_serving")
def test_oversized_bodies_are_refused_before_parsing(client: TestClient) -> None:
    huge = client.post(
        "/v1/classify",
        content=b"x" * 100,
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": "99999999"},
    )
    assert_error(huge, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the stream itself is counted
        for _ in range(6):
            yield b"x" * 1_000_000

    streamed = client.post(
        "/v1/classify",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert_error(streamed, 413, "payload_too_large")


@pytest.mark.usefixtures("still_serving")
def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")


# --- admission control ----------------------------------------------------------------------


async def test_full_queue_answers_429_with_retry_after(tmp_path: Path) -> None:
    app = create_app(lite0_settings(tmp_path, queue_size=1, max_batch_size=1, max_wait_ms=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            data = [jpeg("coffee") + bytes([i]) for i in range(24)]
            responses = await asyncio.gather(
                *(http.post("/v1/classify", files={"file": ("a.jpg", d)}) for d in data)
            )
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    refused = next(r for r in responses if r.status_code == 429)
    assert_error(refused, 429, "overloaded")
    assert int(refused.headers["retry-after"]) >= 1


def test_expired_deadline_answers_504(tmp_path: Path) -> None:
    # 1 ms deadline: the request expires before its result (decoding alone takes longer).
    with TestClient(create_app(lite0_settings(tmp_path, request_timeout_s=0.001))) as hurried:
        assert_error(classify(hurried, jpeg("coffee")), 504, "deadline_exceeded")
        assert 'batcher_expired_total{version="default"} 1.0' in hurried.get("/metrics").text

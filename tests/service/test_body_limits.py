"""Every route refuses a body over its own limit before buffering it: declared or chunked,
JSON or multipart; a single-image route about one image, a batch route its files."""

import base64
import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.limits import JSON_BODY_BYTES, limit_bytes
from tests.conftest import lite0_settings
from tests.service.test_api import assert_error

UPLOAD = 64 * 1024  # RESNET_SERVE_MAX_UPLOAD_BYTES here: limits of a few hundred KB


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = lite0_settings(tmp_path_factory.mktemp("limits"), max_upload_bytes=UPLOAD)
    with TestClient(create_app(settings)) as client:
        client.settings = settings  # type: ignore[attr-defined]
        yield client


def json_of_size(size: int) -> bytes:
    """A JSON body {"image": "AAAA..."} of exactly `size` bytes."""
    frame = len(b'{"image": ""}')
    return b'{"image": "' + b"A" * (size - frame) + b'"}'


def multipart_of_size(size: int) -> tuple[bytes, str]:
    boundary = "limitboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\0" * (size - len(head) - len(tail)) + tail, boundary


def chunks(body: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post(client: TestClient, path: str, body: bytes, content_type: str, *, chunked: bool) -> int:
    """The status, or 413 only when the body was refused by the route's limit (a body read
    and found to hold too large an image is refused for that, a 4xx of its own: -413)."""
    content = chunks(body) if chunked else body  # an iterator is sent chunked, no length
    answer = client.post(path, content=content, headers={"content-type": content_type})
    if answer.status_code == 413:
        assert_error(answer, 413, "payload_too_large")
        if "this route's limit" not in answer.json()["error"]["message"]:
            return -413
    return answer.status_code


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("form", ["json", "multipart"])
def test_a_single_image_route_takes_about_one_image(
    client: TestClient, form: str, chunked: bool
) -> None:
    limit = limit_bytes("image", client.settings)  # type: ignore[attr-defined]
    assert UPLOAD * 4 // 3 < limit < UPLOAD * 4 // 3 + 100 * 1024  # the image, a few fields
    for size, refused in ((limit, False), (limit + 1, True)):
        if form == "json":
            body, content_type = json_of_size(size), "application/json"
        else:
            body, boundary = multipart_of_size(size)
            content_type = f"multipart/form-data; boundary={boundary}"
        status = post(client, "/v1/classify", body, content_type, chunked=chunked)
        # Just under: read, and refused for what it is (no image, too large an image).
        assert (status == 413) is refused, (size, status)


def test_each_route_has_its_own_limit(client: TestClient) -> None:
    settings = client.settings  # type: ignore[attr-defined]
    one, two = limit_bytes("image", settings), limit_bytes("two_images", settings)
    batch = limit_bytes("batch", settings)
    assert one < two < batch
    body, boundary = multipart_of_size(one + 1)
    multipart = f"multipart/form-data; boundary={boundary}"
    # Over one image: refused by the single-image routes, read by the two-image and batch ones.
    for path in ("/v1/classify", "/v1/embed", "/v1/search", "/v1/explain", "/v1/features"):
        assert post(client, path, body, multipart, chunked=False) == 413, path
    assert post(client, "/v1/similarity", body, multipart, chunked=False) != 413
    assert post(client, "/v1/classify/batch", body, multipart, chunked=False) != 413
    big, boundary = multipart_of_size(batch + 1)
    assert post(client, "/v1/classify/batch", big, f"multipart/form-data; boundary={boundary}",
                chunked=True) == 413  # fmt: skip
    # A JSON-only route: a document, not images.
    document = json.dumps({"name": "v9", "weights": "x" * JSON_BODY_BYTES}).encode()
    assert post(client, "/v1/models", document, "application/json", chunked=False) == 413


def test_the_limits_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/v1/classify"]["post"]["x-body-limit"] == "image"
    assert paths["/v1/similarity"]["post"]["x-body-limit"] == "two_images"
    assert paths["/v1/items/batch"]["post"]["x-body-limit"] == "batch"


def test_a_real_image_within_the_limit_is_served(client: TestClient) -> None:
    from tests.photos import resized_jpeg

    small = resized_jpeg("coffee", 0.5)
    assert len(small) < UPLOAD
    answer = client.post("/v1/classify", json={"image": base64.b64encode(small).decode()})
    assert answer.status_code == 200, answer.text


def test_large_json_bodies_at_once_draw_on_one_budget(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON is held whole until parsed: past its free first MiB (none here) a body draws on
    the process's budget (1,000 bytes here); over it, 429. Multipart (spooled) draws none,
    and what a finished request drew is given back."""
    from service.http import limits

    monkeypatch.setattr(limits, "FREE_BODY_BYTES", 0)
    monkeypatch.setattr(limits, "LARGE_JSON_BUDGET_BYTES", 1000)
    body = json_of_size(100_000)
    for chunked in (False, True):
        answer = client.post(
            "/v1/classify",
            content=chunks(body) if chunked else body,
            headers={"content-type": "application/json"},
        )
        assert_error(answer, 429, "overloaded")
        assert "large JSON bodies" in answer.json()["error"]["message"]
        assert int(answer.headers["retry-after"]) >= 1
        time.sleep(int(answer.headers["retry-after"]))  # as told (sooner, the door holds it)
    multipart, boundary = multipart_of_size(100_000)
    content_type = f"multipart/form-data; boundary={boundary}"
    assert post(client, "/v1/classify", multipart, content_type, chunked=False) != 429
    small = json_of_size(900)  # the budget came back: a small one fits
    assert post(client, "/v1/classify", small, "application/json", chunked=False) != 429


async def test_only_a_few_large_bodies_are_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its free first MiB (ten bytes here) a body of any kind counts as large, and only
    a few are read at once (one here): another is refused as it passes its first MiB, with
    the retry hint; a small one is never held up; a finished one gives its place back."""
    import asyncio
    from types import SimpleNamespace

    from batching import QueueFull
    from service.http import limits
    from service.settings import Settings

    monkeypatch.setattr(limits, "FREE_BODY_BYTES", 10)
    monkeypatch.setattr(limits, "LARGE_BODIES_PER_CORE", 1)
    monkeypatch.setattr(limits, "available_cores", lambda: 1)
    first_piece_read = asyncio.Event()
    finish_first = asyncio.Event()

    async def reads_the_body(scope: dict, receive: object, send: object) -> None:
        while (await receive())["more_body"]:  # type: ignore[operator]
            first_piece_read.set()

    door = limits.BodyLimit(reads_the_body, [], Settings())
    scope = {
        "type": "http",
        "path": "/x",
        "headers": [],
        "app": SimpleNamespace(router=SimpleNamespace(routes=[])),
    }

    def body(pieces: list[bytes], wait: asyncio.Event | None = None) -> object:
        async def receive() -> dict:
            piece = pieces.pop(0)
            if not pieces and wait is not None:
                await wait.wait()
            return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

        return receive

    first = asyncio.create_task(door(scope, body([b"x" * 20, b"y" * 20, b""], finish_first), None))
    await first_piece_read.wait()
    with pytest.raises(QueueFull) as refused:
        await door(scope, body([b"x" * 20, b""]), None)
    assert "large bodies" in str(refused.value) and refused.value.retry_after_s >= 1
    await door(scope, body([b"x" * 5, b""]), None)  # a small body is read meanwhile
    finish_first.set()
    await first
    await door(scope, body([b"x" * 20, b""]), None)  # the place came back

"""API key, request ids and CORS, through the ASGI app."""

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.access import presented_key, requires_key
from service.logs import JsonFormatter, RequestIdFilter, current_request_id
from tests.conftest import lite0_settings
from tests.photos import jpeg
from tests.service.test_api import assert_error, classify
from tests.service.test_search_api import put

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Index writes need the key; a browser at https://app.example may call the API."""
    settings = lite0_settings(
        tmp_path_factory.mktemp("guarded"), api_key=KEY, cors_origins="https://app.example"
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = lite0_settings(tmp_path_factory.mktemp("locked"), api_key=KEY, api_key_scope="all")
    with TestClient(create_app(settings)) as client:
        yield client


def test_index_writes_need_the_key_and_refusals_write_nothing(guarded: TestClient) -> None:
    cat = jpeg("chelsea")
    missing = put(guarded, "pets/cat", cat)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "missing" in missing.json()["error"]["message"]
    guarded.headers["X-API-Key"] = "s3cret-key-for-test"  # one character short
    try:
        wrong = put(guarded, "pets/cat", cat)
    finally:
        del guarded.headers["X-API-Key"]
    assert_error(wrong, 401, "unauthorized")
    assert "wrong" in wrong.json()["error"]["message"]
    assert_error(guarded.get("/v1/items/pets/cat"), 404, "not_found")  # nothing was written

    guarded.headers["Authorization"] = f"Bearer {KEY}"
    try:
        assert put(guarded, "pets/cat", cat).status_code in (200, 201)
    finally:
        del guarded.headers["Authorization"]
    assert guarded.get("/v1/items/pets/cat").status_code == 200  # reads stay open
    assert_error(guarded.delete("/v1/items/pets/cat"), 401, "unauthorized")
    deleted = guarded.delete("/v1/items/pets/cat", headers={"X-API-Key": KEY})
    assert deleted.status_code == 204


def test_attaching_a_head_needs_the_key(guarded: TestClient) -> None:
    assert_error(guarded.put("/v1/heads/h", json={"source": "/nowhere"}), 401, "unauthorized")
    assert_error(guarded.delete("/v1/heads/h"), 401, "unauthorized")
    assert guarded.get("/v1/heads").status_code == 200  # the listing is a read
    keyed = guarded.put("/v1/heads/h", json={"source": "/nowhere"}, headers={"X-API-Key": KEY})
    assert_error(keyed, 422, "invalid_input")  # past the key: the directory is checked


def test_reads_and_inference_stay_open_under_the_writes_scope(guarded: TestClient) -> None:
    assert classify(guarded, jpeg("coffee"), top_k=1).status_code == 200
    assert guarded.get("/v1/index").status_code == 200


def test_everything_but_the_probes_needs_the_key_under_the_all_scope(locked: TestClient) -> None:
    assert_error(classify(locked, jpeg("coffee")), 401, "unauthorized")
    assert_error(locked.get("/metrics"), 401, "unauthorized")
    assert_error(locked.get("/v1/nothing-here"), 401, "unauthorized")  # no route map for free
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code == 200
    locked.headers["Authorization"] = f"bearer {KEY}"  # the scheme is case-insensitive
    try:
        assert classify(locked, jpeg("coffee"), top_k=1).status_code == 200
    finally:
        del locked.headers["Authorization"]


def test_where_the_key_is_needed() -> None:
    assert requires_key("PUT", "/v1/items/a", "writes")
    assert requires_key("PUT", "/v1/heads/a", "writes") and requires_key(
        "DELETE", "/v1/heads/a", "writes"
    )
    assert not requires_key("GET", "/v1/heads", "writes")
    assert requires_key("DELETE", "/v1/items/a", "writes")
    assert not requires_key("GET", "/v1/items/a", "writes")
    assert not requires_key("POST", "/v1/search", "writes")
    assert requires_key("POST", "/v1/search", "all")
    assert not requires_key("GET", "/ui/", "all")  # the page has its own login


def test_the_key_is_read_from_either_header() -> None:
    assert presented_key({b"authorization": b"Bearer abc"}) == b"abc"
    assert presented_key({b"x-api-key": b"abc"}) == b"abc"
    assert presented_key({b"authorization": b"Basic abc"}) is None
    assert presented_key({b"authorization": b"Bearer "}) is None
    assert presented_key({}) is None


def test_every_response_has_a_request_id(client: TestClient) -> None:
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert client.get("/healthz").headers["x-request-id"] != made
    kept = client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b"})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    for insane in (b"has spaces", b"x" * 129, "naïve".encode()):
        replaced = client.get("/healthz", headers={"X-Request-ID": insane})
        assert len(replaced.headers["x-request-id"]) == 32
    error = client.get("/v1/items/none/such", headers={"X-Request-ID": "err-1"})
    assert error.status_code == 404 and error.headers["x-request-id"] == "err-1"


def test_cors_is_closed_unless_configured(client: TestClient, guarded: TestClient) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key",
    }
    closed = client.options("/v1/classify", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    simple = client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in simple.headers

    opened = guarded.options("/v1/classify", headers=preflight)
    assert opened.status_code == 200
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    other = guarded.options("/v1/classify", headers=preflight | {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_json_log_lines_carry_the_request_id(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter("http-0"))
    logger = logging.getLogger("tests.access.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = current_request_id.set("trace-7")
    try:
        logger.warning("slow decode: %d ms", 130)
    finally:
        current_request_id.reset(token)
    logger.warning("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "trace-7" and first["message"] == "slow decode: 130 ms"
    assert first["level"] == "WARNING" and first["process"] == "http-0"
    assert second["request_id"] == "-"

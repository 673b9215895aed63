"""The service with INDEX_ENGINE=milvus on a Milvus server (Milvus Lite's, started once for
the module): the item and search API answers as it does on FAISS, model versions switch the
live aliases, a Milvus that goes away is a 503 until it returns (nothing acknowledged lost),
and one that cannot be reached at all stops the start naming it."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pymilvus import MilvusClient

from index.milvus_admin import live_alias_names
from index.milvus_collection import MilvusUnavailable
from loadtest.common.processes import free_port
from service.app import create_app
from service.versions.records import version_settings
from service.versions.registry import VersionRecord
from tests.conftest import lite0_settings
from tests.milvus_server import MilvusServer
from tests.photos import jpeg

ROOT = "resnet_serve"  # the default collection prefix: the default version's, and the aliases'
ODD_OWNER = 'x" or 1 == 1 or "'  # a value that would change the expression if it were text


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, milvus: MilvusServer) -> Iterator[TestClient]:
    settings = lite0_settings(
        tmp_path_factory.mktemp("milvus"), index_engine="milvus", milvus_uri=milvus.uri
    )
    with TestClient(create_app(settings)) as client:
        yield client


def upload(name: str) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (f"{name}.jpg", jpeg(name), "image/jpeg")}


def test_items_search_filters_and_stats_through_the_api(http: TestClient) -> None:
    for name, owner in (("coffee", ODD_OWNER), ("chelsea", "ann"), ("rocket", "ann")):
        put = http.put(
            f"/v1/items/photos/{name}",
            files=upload(name),
            data={"metadata": json.dumps({"owner": owner})},
        )
        assert put.status_code == 201, put.text
    assert http.put("/v1/items/photos/rocket", files=upload("rocket")).status_code == 200
    found = http.post("/v1/search", params={"k": 2}, files=upload("coffee")).json()["results"]
    assert found[0]["id"] == "photos/coffee" and found[0]["score"] == pytest.approx(1, abs=1e-3)
    odd = http.post(
        "/v1/search", params={"filter": json.dumps({"owner": ODD_OWNER})}, files=upload("chelsea")
    ).json()["results"]
    assert [hit["id"] for hit in odd] == ["photos/coffee"]  # matched literally, nothing else
    control = http.post(
        "/v1/search", params={"filter": json.dumps({"owner": "a\nb"})}, files=upload("chelsea")
    )
    assert control.status_code == 422 and "control characters" in control.text
    similar = http.get("/v1/items/photos/coffee/similar", params={"k": 5}).json()["results"]
    assert {hit["id"] for hit in similar} == {"photos/chelsea", "photos/rocket"}
    assert http.get("/v1/items/photos/chelsea").json()["metadata"] == {"owner": "ann"}
    assert http.get("/v1/items/photos/chelsea/image").content == jpeg("chelsea")
    stats = http.get("/v1/index").json()
    assert stats["count"] == 3 and stats["kind"] == "milvus"
    assert http.delete("/v1/items/photos/coffee").status_code == 204
    again = http.post("/v1/search", params={"k": 3}, files=upload("coffee")).json()["results"]
    assert "photos/coffee" not in {hit["id"] for hit in again}


def test_an_unreachable_milvus_stops_the_start_naming_it(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    settings = lite0_settings(tmp_path, index_engine="milvus", milvus_uri=uri)
    with pytest.raises(MilvusUnavailable, match=uri), TestClient(create_app(settings)):
        pass


def test_versions_keep_collections_of_their_own_and_switch_the_live_alias(
    http: TestClient, milvus: MilvusServer
) -> None:
    assert http.put("/v1/items/version/cup", files=upload("coffee")).status_code == 201
    added = http.post("/v1/models", json={"name": "v2", "weights": "lite0-package"})
    assert added.status_code == 202, added.text
    deadline = time.monotonic() + 180
    while (state := http.get("/v1/models").json()["versions"][-1]["state"]) != "ready":
        assert state in ("loading", "re-embedding") and time.monotonic() < deadline, state
        time.sleep(0.1)
    pinned = http.post(
        "/v1/search", params={"k": 1, "version": "v2"}, files=upload("coffee")
    ).json()["results"]
    assert pinned[0]["id"] == "version/cup"  # re-embedded into v2's own collection
    client = MilvusClient(milvus.uri)
    assert live_items(client) == f"{ROOT}_items"
    v2_items = next(
        c for c in client.list_collections() if re.fullmatch(f"{ROOT}_v_v2_[0-9a-f]+_items", c)
    )
    assert http.post("/v1/models/v2/activate").status_code == 200
    assert live_items(client) == v2_items
    # A reader of the alias finds the live version's items
    rows = client.query(f"{ROOT}_live_items", filter='id == "version/cup"', output_fields=["id"])
    assert [row["id"] for row in rows] == ["version/cup"]
    assert http.post("/v1/models/default/activate").status_code == 200  # the rollback
    assert live_items(client) == f"{ROOT}_items"
    assert http.delete("/v1/models/v2").status_code == 204
    assert v2_items not in client.list_collections()  # dropped with its version
    client.close()


def test_a_milvus_that_goes_away_is_a_503_until_it_returns_losing_nothing(
    http: TestClient, milvus: MilvusServer
) -> None:
    assert http.put("/v1/items/kept/one", files=upload("astronaut")).status_code == 201
    milvus.kill()
    try:
        down = http.get("/v1/items/kept/one")
        assert down.status_code == 503 and down.json()["error"]["code"] == "unavailable"
        assert http.post("/v1/search", files=upload("astronaut")).status_code == 503
        # Serving everyone else goes on
        assert http.post("/v1/classify", files=upload("astronaut")).status_code == 200
    finally:
        milvus.start()
    deadline = time.monotonic() + 60  # gRPC reconnects with back-off
    while (back := http.get("/v1/items/kept/one")).status_code == 503:
        assert time.monotonic() < deadline, back.text
        time.sleep(0.2)
    assert back.status_code == 200 and back.json()["id"] == "kept/one"
    found = http.post("/v1/search", params={"k": 1}, files=upload("astronaut")).json()["results"]
    assert found[0]["id"] == "kept/one"


def live_items(client: MilvusClient) -> str:
    """The items collection the live alias names."""
    return str(client.describe_alias(live_alias_names(ROOT)[0])["collection_name"])


def test_each_version_has_its_own_milvus_collections(tmp_path: Path) -> None:
    """On a Milvus server every version shares the URI: the prefix keeps them apart."""
    settings = lite0_settings(tmp_path, index_engine="milvus", milvus_uri="http://milvus:19530")
    names = {
        version_settings(
            settings, VersionRecord(name, "random", "tf_efficientnet_lite0")
        ).milvus_collection_prefix
        for name in ("default", "v2", "v-2", "v_2")
    }
    assert len(names) == 4 and "resnet_serve" in names
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in names)

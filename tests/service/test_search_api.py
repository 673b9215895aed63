"""Similarity search over HTTP: items, search, similar, similarity, index info, bad input."""

import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from index.store import ModelMismatch
from service.app import create_app
from tests.conftest import lite0_settings
from tests.photos import PHOTO_NAMES, encode, jpeg, photo, resized_jpeg
from tests.service.test_api import assert_error


def put(client: TestClient, item_id: str, data: bytes, metadata: object = None) -> httpx.Response:
    form = {} if metadata is None else {"metadata": json.dumps(metadata)}
    return client.put(
        f"/v1/items/{item_id}", files={"file": ("x.jpg", data, "image/jpeg")}, data=form
    )


def search(client: TestClient, data: bytes, k: object = 10) -> httpx.Response:
    return client.post("/v1/search", files={"file": ("q.jpg", data, "image/jpeg")}, params={"k": k})


def count(client: TestClient) -> int:
    return int(client.get("/v1/index").json()["count"])


@pytest.fixture(scope="module")
def gallery(client: TestClient) -> dict[str, str]:
    """The six photos as items under gallery/; returns name -> id."""
    ids = {name: f"gallery/{name}.jpg" for name in PHOTO_NAMES}
    for name, item_id in ids.items():
        assert put(client, item_id, jpeg(name), {"name": name}).status_code in (200, 201)
    return ids


def test_item_lifecycle(client: TestClient) -> None:
    created = put(client, "life/cat", jpeg("chelsea"), {"colour": "ginger", "tags": ["cat"]})
    assert created.status_code == 201 and created.json()["created"] is True
    replaced = put(client, "life/cat", jpeg("chelsea"), {"colour": "tabby"})
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    fetched = client.get("/v1/items/life/cat").json()
    assert fetched["id"] == "life/cat" and fetched["metadata"] == {"colour": "tabby"}
    assert fetched["added_at"].endswith("Z") or "+00:00" in fetched["added_at"]
    assert client.delete("/v1/items/life/cat").status_code == 204
    assert_error(client.delete("/v1/items/life/cat"), 404, "not_found")
    assert_error(client.get("/v1/items/life/cat"), 404, "not_found")


def test_an_indexed_image_finds_itself_first(client: TestClient, gallery: dict[str, str]) -> None:
    for name in ("coffee", "rocket"):
        results = search(client, jpeg(name), k=3).json()["results"]
        assert results[0]["id"] == gallery[name] and results[0]["score"] >= 0.99
        assert results[0]["metadata"] == {"name": name}


def test_motorcycle_left_finds_motorcycle_right_before_unrelated_photos(
    client: TestClient, gallery: dict[str, str]
) -> None:
    results = search(client, jpeg("motorcycle_left"), k=6).json()["results"]
    ranked = [r["id"] for r in results if r["id"].startswith("gallery/")]
    assert ranked[:2] == [gallery["motorcycle_left"], gallery["motorcycle_right"]]


def test_similar_uses_the_stored_vector_and_leaves_the_item_out(
    client: TestClient, gallery: dict[str, str]
) -> None:
    results = client.get(f"/v1/items/{gallery['motorcycle_left']}/similar", params={"k": 3}).json()
    ids = [r["id"] for r in results["results"]]
    assert gallery["motorcycle_left"] not in ids and ids[0] == gallery["motorcycle_right"]
    assert_error(client.get("/v1/items/gallery/nothing/similar"), 404, "not_found")


def test_similarity_of_two_images(client: TestClient) -> None:
    def score(a: bytes, b: bytes) -> float:
        files = {"a": ("a.jpg", a, "image/jpeg"), "b": ("b.jpg", b, "image/jpeg")}
        response = client.post("/v1/similarity", files=files)
        assert response.status_code == 200, response.text
        return float(response.json()["score"])

    assert score(jpeg("coffee"), resized_jpeg("coffee", 0.7)) > 0.9
    assert score(jpeg("coffee"), jpeg("chelsea")) < 0.5
    assert_error(
        client.post("/v1/similarity", files={"a": ("a.jpg", jpeg("coffee"))}), 422, "invalid_input"
    )


def test_index_info_names_the_model_of_the_vectors(
    client: TestClient, gallery: dict[str, str]
) -> None:
    info = client.get("/v1/index").json()
    ready = client.get("/readyz").json()
    assert info["dimension"] == 1280 and info["kind"] == "Flat" and info["factory"] == "auto"
    assert info["reason"].startswith("exact: ") and info["nprobe"] == 0
    assert info["building"] is None and info["last_build_error"] is None
    assert info["fingerprint"] == ready["fingerprint"] and info["model"] == ready["model"]
    assert info["count"] >= len(gallery)
    assert info["index_bytes_per_item"] == 4 * 1280 + 8  # float32 code and its id
    assert info["store_vector_bytes"] == 2 * 1280  # float16


def test_search_accepts_base64_json(client: TestClient, gallery: dict[str, str]) -> None:
    import base64

    body = {"image": base64.b64encode(jpeg("chelsea")).decode()}
    results = client.post("/v1/search", json=body, params={"k": 1}).json()["results"]
    assert results[0]["id"] == gallery["chelsea"]


@pytest.mark.parametrize(
    "item_id",
    [
        "x" * 257,
        "has space",
        "semi;colon",
        "a//b",
        "%2E%2E/etc",  # dot segments percent-encoded, or clients normalise them away
        "a/%2E/b",
        "trailing/",
        "é",
    ],
)
def test_bad_item_ids_are_refused_and_change_nothing(client: TestClient, item_id: str) -> None:
    before = count(client)
    assert_error(put(client, item_id, jpeg("coffee")), 422, "invalid_input")
    assert count(client) == before


@pytest.mark.parametrize(
    "item_id, allowed", [("a/similar", "GET"), ("a/image", "GET"), ("batch", "POST")]
)
def test_ids_ending_in_an_item_route_are_that_routes_path(
    client: TestClient, item_id: str, allowed: str
) -> None:
    before = count(client)
    refused = put(client, item_id, jpeg("coffee"))
    assert_error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == allowed  # what the /similar, /image, /batch routes take
    assert count(client) == before


def test_405_lists_every_method_the_path_takes(client: TestClient) -> None:
    refused = client.post("/v1/items/some/item")
    assert_error(refused, 405, "method_not_allowed")
    assert refused.headers["allow"] == "DELETE, GET, PUT"


@pytest.mark.parametrize(
    "metadata",
    ["not json", "[1, 2]", '"text"', json.dumps({"blob": "x" * 20_000})],
    ids=["not-json", "array", "string", "too-large"],
)
def test_bad_metadata_is_refused_and_changes_nothing(client: TestClient, metadata: str) -> None:
    before = count(client)
    response = client.put(
        "/v1/items/meta/bad",
        files={"file": ("x.jpg", jpeg("coffee"), "image/jpeg")},
        data={"metadata": metadata},
    )
    assert_error(response, 422, "invalid_input")
    assert count(client) == before
    assert client.get("/v1/items/meta/bad").status_code == 404


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"", "image/jpeg", 422),
        (jpeg("coffee")[:1500], "image/jpeg", 422),
        (b"x" * 1_000_001, "image/jpeg", 413),
        (b"hello", "text/plain", 415),
    ],
    ids=["empty", "truncated", "too-big", "not-an-image-type"],
)
def test_bad_item_images_are_refused_and_change_nothing(
    client: TestClient, data: bytes, content_type: str, status: int
) -> None:
    before = count(client)
    response = client.put("/v1/items/img/bad", files={"file": ("x", data, content_type)})
    assert response.status_code == status
    assert count(client) == before


@pytest.mark.parametrize("k", ["0", "1001", "ten"])
def test_bad_k_is_refused(client: TestClient, k: str) -> None:
    assert_error(search(client, jpeg("coffee"), k=k), 422, "invalid_input")
    assert_error(
        client.get("/v1/items/gallery/coffee.jpg/similar", params={"k": k}), 422, "invalid_input"
    )


def test_a_different_model_refuses_the_index_and_names_reindex(tmp_path: Path) -> None:
    with TestClient(create_app(lite0_settings(tmp_path))) as first:
        assert put(first, "one", jpeg("coffee")).status_code == 201
    other_weights = lite0_settings(tmp_path, weights="random")
    with (
        pytest.raises(ModelMismatch, match="resnet-serve index reindex"),
        TestClient(create_app(other_weights)),
    ):
        pass


def test_the_stored_image_is_served_back(client: TestClient, tmp_path: Path) -> None:
    png = encode(photo("rocket"), "PNG")
    assert put(client, "served/rocket", png).status_code in (200, 201)
    served = client.get("/v1/items/served/rocket/image")
    assert served.status_code == 200 and served.content == png
    assert served.headers["content-type"] == "image/png"
    assert_error(client.get("/v1/items/served/nothing/image"), 404, "not_found")
    assert_error(client.get("/v1/items/bad%20id/image"), 422, "invalid_input")
    settings = lite0_settings(tmp_path, index_keep_images=False)
    with TestClient(create_app(settings)) as without_images:
        assert put(without_images, "imageless", jpeg("coffee")).status_code == 201
        assert_error(without_images.get("/v1/items/imageless/image"), 404, "not_found")


def test_filters_narrow_search_and_similar_to_matching_metadata(
    client: TestClient, gallery: dict[str, str]
) -> None:
    only = json.dumps({"name": ["rocket", "astronaut"]})
    found = client.post(
        "/v1/search",
        files={"file": ("q.jpg", jpeg("coffee"), "image/jpeg")},
        params={"k": 5, "filter": only},
    ).json()["results"]
    assert sorted(r["id"] for r in found) == sorted([gallery["rocket"], gallery["astronaut"]])
    similar = client.get(
        f"/v1/items/{gallery['motorcycle_left']}/similar",
        params={"k": 3, "filter": json.dumps({"name": "coffee"})},
    ).json()["results"]
    assert [r["id"] for r in similar] == [gallery["coffee"]]
    nobody = client.post(
        "/v1/search",
        files={"file": ("q.jpg", jpeg("coffee"), "image/jpeg")},
        params={"filter": json.dumps({"no such key": 1})},
    )
    assert nobody.status_code == 200 and nobody.json()["results"] == []


@pytest.mark.parametrize(
    "bad",
    [
        "owner",
        "[1]",
        "{}",
        '{"a": {"b": 1}}',
        '{"a": []}',
        '{"a": 1' + "1" * 5000 + "}",  # past Python's 4,300-digit limit on int parsing
        '{"a": 1' + "1" * 9000 + "}",  # past the 8 KB limit
    ],
)
def test_a_malformed_filter_is_a_422(client: TestClient, gallery: dict[str, str], bad: str) -> None:
    answer = client.get(f"/v1/items/{gallery['coffee']}/similar", params={"filter": bad})
    assert_error(answer, 422, "invalid_input")
    searched = client.post(
        "/v1/search",
        files={"file": ("q.jpg", jpeg("coffee"), "image/jpeg")},
        params={"filter": bad},
    )
    assert_error(searched, 422, "invalid_input")


def test_filter_is_in_the_openapi_spec(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, method in (("/v1/search", "post"), ("/v1/items/{item_id}/similar", "get")):
        names = [p["name"] for p in spec["paths"][path][method]["parameters"]]
        assert "filter" in names, (path, names)
    assert "/v1/items/batch" in spec["paths"]


def test_a_batch_of_items_is_answered_item_by_item(client: TestClient) -> None:
    files = [
        ("files", ("a.jpg", jpeg("coffee"), "image/jpeg")),
        ("files", ("b.jpg", b"not an image", "image/jpeg")),
        ("files", ("c.jpg", jpeg("rocket"), "image/jpeg")),
        ("files", ("d.jpg", jpeg("chelsea"), "image/jpeg")),
    ]
    items = [
        {"id": "batch/coffee", "metadata": {"kind": "cup"}},
        {"id": "batch/broken"},
        {"id": "batch/rocket"},
        {"id": "bad id"},
    ]
    answer = client.post("/v1/items/batch", files=files, data={"items": json.dumps(items)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["added"], body["replaced"], body["failed"]) == (2, 0, 2)
    results = body["results"]
    assert [r["created"] for r in results] == [True, None, True, None]
    assert results[1]["error"]["code"] == "invalid_input" and results[1]["id"] == "batch/broken"
    assert "item id" in results[3]["error"]["message"]
    assert client.get("/v1/items/batch/coffee").json()["metadata"] == {"kind": "cup"}
    assert client.get("/v1/items/batch/broken").status_code == 404
    again = client.post("/v1/items/batch", files=files[:1], data={"items": json.dumps(items[:1])})
    assert again.json()["replaced"] == 1


@pytest.mark.parametrize("items", [None, "not json", "[]", '[{"id": "a"}, {"id": "b"}]'])
def test_a_batch_whose_item_list_does_not_fit_the_files_is_a_422(
    client: TestClient, items: str | None
) -> None:
    files = [("files", ("a.jpg", jpeg("coffee"), "image/jpeg"))]
    data = {} if items is None else {"items": items}
    assert_error(client.post("/v1/items/batch", files=files, data=data), 422, "invalid_input")


def test_metadata_numbers_of_any_size_are_stored_and_filterable(client: TestClient) -> None:
    huge = 10**400
    assert put(client, "numbers/huge", jpeg("rocket"), {"n": huge, "f": 1e308}).status_code == 201
    assert put(client, "numbers/one", jpeg("coffee"), {"n": 1.0}).status_code == 201
    anchor = "/v1/items/numbers/one/similar"
    found = client.get(anchor, params={"filter": json.dumps({"n": huge})}).json()["results"]
    assert [r["id"] for r in found] == ["numbers/huge"]
    one = client.get("/v1/items/numbers/huge/similar", params={"filter": '{"n": 1}'}).json()
    assert [r["id"] for r in one["results"]] == ["numbers/one"]  # 1 matches 1.0
    too_long = '{"n": ' + "1" * 5000 + "}"
    answer = client.put(
        "/v1/items/numbers/long",
        files={"file": ("x.jpg", jpeg("coffee"), "image/jpeg")},
        data={"metadata": too_long},
    )
    assert_error(answer, 422, "invalid_input")

"""Inside the model over HTTP: Grad-CAM, feature maps, kernels and the model card.

With the offline real weights (EfficientNet-Lite0), so the maps mean something.
"""

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.explain.explainer import Explainer
from service.model.runtime import load_parts
from tests.conftest import lite0_settings, pinned_settings
from tests.photos import jpeg

BOX = json.loads((Path(__file__).parents[1] / "data" / "coffee_cup_box.json").read_text())
ESPRESSO, TENCH = 967, 0


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(lite0_settings(tmp_path_factory.mktemp("data"), explain_queue=16))
    with TestClient(app) as client:
        yield client


def upload(name: str = "coffee") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (f"{name}.jpg", jpeg(name), "image/jpeg")}


def explain(http: TestClient, **params: object) -> dict[str, object]:
    response = http.post("/v1/explain", params={"format": "json", **params}, files=upload())
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def mass_in_box(answer: dict[str, object], box: list[int], size: list[int]) -> float:
    """Share of the heatmap's mass whose grid cell centre falls in the box (image pixels)."""
    heatmap = np.asarray(answer["heatmap"], np.float64)
    left, top, right, bottom = answer["region"]  # type: ignore[misc]
    rows, columns = heatmap.shape
    xs = (left + (np.arange(columns) + 0.5) / columns * (right - left)) * size[0]
    ys = (top + (np.arange(rows) + 0.5) / rows * (bottom - top)) * size[1]
    inside = np.outer((ys >= box[1]) & (ys <= box[3]), (xs >= box[0]) & (xs <= box[2]))
    return float(heatmap[inside].sum() / heatmap.sum())


def test_gradcam_of_the_top_class_sits_on_the_cup(http: TestClient) -> None:
    answer = explain(http)
    assert answer["class_id"] == ESPRESSO and answer["label"] == "espresso"
    assert answer["method"] == "gradcam" and answer["layer"] == "C5"
    assert mass_in_box(answer, BOX["box"], BOX["size"]) > 0.5
    unrelated = explain(http, class_id=TENCH)
    assert unrelated["class_id"] == TENCH and unrelated["score"] < 0.01  # type: ignore[operator]
    first, other = (np.asarray(a["heatmap"]).ravel() for a in (answer, unrelated))
    assert np.corrcoef(first, other)[0, 1] < 0.9  # a different map, not the same one again


def test_the_png_is_the_heatmap_over_the_photo_at_its_own_size(http: TestClient) -> None:
    response = http.post("/v1/explain", files=upload())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (600, 400) and picture.mode == "RGB"
    again = http.post("/v1/explain", files=upload())
    assert again.headers["x-cache"] == "hit" and again.content == response.content


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "layercam"])
def test_every_method_and_any_stage(http: TestClient, method: str) -> None:
    for layer in ("C4", "3", "blocks.1"):
        answer = explain(http, method=method, layer=layer)
        grid = np.asarray(answer["heatmap"])
        assert answer["method"] == method and grid.shape == (14, 14)
        assert grid.min() >= 0 and grid.max() <= 1


def assert_4xx(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and words in error["message"]


def test_bad_parameters_and_images_get_a_clear_4xx(http: TestClient) -> None:
    for params, words in (
        ({"class_id": 1000}, "class_id must be 0..999"),
        ({"class_id": -1}, "class_id"),
        ({"method": "scorecam"}, "method"),
        ({"layer": "layer9"}, "not a stage"),
        ({"format": "gif"}, "format"),
    ):
        assert_4xx(http.post("/v1/explain", params=params, files=upload()), 422, words)
    for params, words in (
        ({"stage": 0}, "stage"),
        ({"stage": 6}, "stage must be 1..5"),
        ({"channels": 0}, "channels"),
        ({"stage": 1, "channels": 17}, "stage 1 has 16 channels"),
    ):
        assert_4xx(http.post("/v1/features", params=params, files=upload()), 422, words)
    corrupt = {"file": ("x.jpg", b"\xff\xd8 not really", "image/jpeg")}
    for path in ("/v1/explain", "/v1/features"):
        assert_4xx(http.post(path, files=corrupt), 422)
        assert_4xx(http.post(path, content=b"{}", headers={"content-type": "text/plain"}), 415)
    classify = http.post("/v1/classify", files=upload())  # still serving
    assert classify.json()["predictions"][0]["label"] == "espresso"


def test_feature_maps_of_every_stage(http: TestClient) -> None:
    channels = {1: 16, 2: 24, 3: 40, 4: 112, 5: 320}
    for stage, count in channels.items():
        picture = http.post("/v1/features", params={"stage": stage, "channels": 8}, files=upload())
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        shape = [int(v) for v in picture.headers["x-feature-shape"].split(",")]
        assert shape[0] == count and len(picture.headers["x-feature-channels"].split(",")) == 8
        numbers = http.post(
            "/v1/features", params={"stage": stage, "format": "json"}, files=upload()
        ).json()
        assert numbers["shape"] == shape and len(numbers["channel_means"]) == count
        means = numbers["channel_means"]
        top = numbers["most_active"]
        assert means[top[0]] == max(means) and len(top) == 16


def test_kernels_and_model_card_are_measured_from_the_model(http: TestClient) -> None:
    kernels = http.get("/v1/model/kernels")
    assert kernels.status_code == 200 and kernels.headers["x-kernel-shape"] == "32,3,3,3"
    assert Image.open(io.BytesIO(kernels.content)).format == "PNG"
    card = http.get("/v1/model").json()
    assert card["model"] == "tf_efficientnet_lite0" and card["weights"] == "lite0-package"
    assert card["parameters"] == 4_652_008 and 0.3 < card["gmacs"] < 0.5
    assert card["input_size"] == [3, 224, 224] and card["embedding_dim"] == 1280
    assert card["preprocessing"]["interpolation"] == "bicubic"
    assert [s["shape"] for s in card["stages"]][-1] == [320, 7, 7]
    assert card["labels"].startswith("imagenet-1k") and card["num_classes"] == 1000
    assert (card["backend"], card["precision"], card["device"]) == ("torch-cpu-fp32", "fp32", "cpu")


def test_resnet50_card_counts_its_own_parameters_and_macs(tmp_path: Path) -> None:
    parts = load_parts(pinned_settings(tmp_path, weights="random"))
    card = Explainer(parts.module, parts.spec, replicas=1).card("torch-cpu-fp32", "fp32", "cpu")
    assert card.parameters == 25_557_032 and 4.0 < card.gmacs < 4.2
    assert [s.shape for s in card.stages] == [
        (64, 112, 112),
        (256, 56, 56),
        (512, 28, 28),
        (1024, 14, 14),
        (2048, 7, 7),
    ]


async def test_a_burst_of_explanations_is_shed_not_queued_for_ever(tmp_path: Path) -> None:
    app = create_app(lite0_settings(tmp_path, explain_concurrency=1, explain_queue=1))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # Distinct bytes: no cache hit may answer for the model.
            bodies = [jpeg("chelsea") + bytes([i]) for i in range(8)]
            explains = [
                client.post("/v1/explain", files={"file": ("c.jpg", b, "image/jpeg")})
                for b in bodies
            ]
            classify = client.post("/v1/classify", files=upload())
            *answers, classified = await asyncio.gather(*explains, classify)
    statuses = [a.status_code for a in answers]
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "overloaded"
    assert int(refused.headers["retry-after"]) >= 1
    assert classified.status_code == 200

"""The GPU path fails safe, simulated on the CPU: a broken device JPEG decoder, a candidate
backend that raises, a device out of memory at the largest batch, pinning that fails.

Each failure is one a new user's GPU machine can hit (a driver or library mismatch, an
inductor error, another process on the GPU); none may refuse a good image or stop the start.
"""

import copy
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.errors import Unavailable, describe_error
from service.explain.explainer import Explainer
from service.explain.inspector import InProcessInspector
from service.model import selection
from service.model.backend import TorchBackend
from service.model.backend_search import choose
from service.model.device_jpeg import BROKEN_AFTER_BATCHES, DeviceJpegDecoder
from service.model.fallbacks import Fallbacks
from service.model.model_io import ModelOutputs
from service.model.runtime import ModelRuntime, load_parts
from service.model.selection import Candidate, Choice, ModelParts
from tests.conftest import lite0_settings
from tests.photos import jpeg

PHOTOS = {
    "coffee": "espresso",
    "chelsea": None,
    "rocket": None,
    "astronaut": None,
    "motorcycle_left": None,
}


def fallback_count(http: TestClient, kind: str) -> float:
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "model_fallbacks":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("kind") == kind:
                    return sample.value
    return 0.0


def classify(http: TestClient, data: bytes) -> tuple[int, dict[str, object]]:
    answer = http.post("/v1/classify", files={"file": ("x.jpg", data, "image/jpeg")})
    return answer.status_code, answer.json()


def library_not_available(*_: object) -> list[torch.Tensor]:
    raise RuntimeError("library not available")


def test_a_device_decoder_that_always_fails_leaves_jpegs_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DeviceJpegDecoder, "_decode_batch", library_not_available)
    with TestClient(create_app(lite0_settings(tmp_path, jpeg_decode="device"))) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200
        (warning,) = ready.json()["warnings"]
        assert "JPEG decode stays on the host" in warning and "library not available" in warning
        for name, label in PHOTOS.items():
            status, answer = classify(http, jpeg(name))
            assert status == 200, answer
            if label:
                assert answer["predictions"][0]["label"] == label  # type: ignore[index]


def test_a_device_decoder_that_breaks_while_serving_falls_back_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(lite0_settings(tmp_path, jpeg_decode="device"))) as http:
        assert http.get("/readyz").json()["warnings"] == []  # the self-test passed
        monkeypatch.setattr(DeviceJpegDecoder, "_decode_batch", library_not_available)
        status, answer = classify(http, jpeg("coffee"))
        assert status == 200 and answer["predictions"][0]["label"] == "espresso"  # type: ignore[index]
        assert fallback_count(http, "jpeg_host_decode") == 1
        data = jpeg("chelsea")
        status, answer = classify(http, data[: len(data) // 2])  # the host refuses it too
        assert status == 422 and answer["error"]["code"] == "invalid_input"  # type: ignore[index]
        for name in list(PHOTOS)[1:BROKEN_AFTER_BATCHES]:
            assert classify(http, jpeg(name))[0] == 200
        assert fallback_count(http, "jpeg_host_decode") == BROKEN_AFTER_BATCHES
        (warning,) = http.get("/readyz").json()["warnings"]
        assert "JPEG decode moved to the host" in warning
        assert classify(http, jpeg("motorcycle_left"))[0] == 200


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> ModelParts:
    return load_parts(lite0_settings(tmp_path_factory.mktemp("data")))


def test_a_candidate_that_cannot_be_compiled_is_dropped_and_the_others_compared(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def compile_fails(*_: object, **__: object) -> None:
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp: no plugin")

    monkeypatch.setattr(ov.Core, "compile_model", compile_fails)
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=4)
    choice, backend = choose(lite0, settings)
    assert backend.name == "torch-cpu-fp32"
    assert "failed: openvino/fp32 (RuntimeError" in choice.reason
    assert any("openvino/fp32" in w and "no plugin" in w for w in lite0.fallbacks.warnings)


class FailsAbove:
    """A backend that works up to `limit` images a batch and raises `error` beyond."""

    def __init__(self, inner: TorchBackend, limit: int, error: Exception) -> None:
        self.name = f"fails-above-{limit}"
        self._inner, self._limit, self._error = inner, limit, error
        self.sizes: list[int] = []

    def forward(self, pixels: np.ndarray) -> ModelOutputs:
        self.sizes.append(len(pixels))
        if len(pixels) > self._limit:
            raise self._error
        return self._inner.forward(pixels)


def test_a_candidate_that_fails_at_another_batch_size_gives_way_to_the_next(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = selection.build

    def build(candidate: Candidate, parts: ModelParts, settings: object) -> object:
        backend = real_build(candidate, parts, settings)  # type: ignore[arg-type]
        if candidate.backend == "openvino":  # passes the gate at 8, fails at 16
            return FailsAbove(backend, 8, RuntimeError("inductor: no kernel for this shape"))  # type: ignore[arg-type]
        return backend

    monkeypatch.setattr(selection, "build", build)
    monkeypatch.setattr(selection, "images_per_second", fake_speed)
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=None)
    choice, backend = choose(lite0, settings)
    assert choice.candidate == Candidate("torch", "fp32") and backend.name == "torch-cpu-fp32"
    assert "failed: openvino/fp32 (RuntimeError: inductor: no kernel" in choice.reason


def fake_speed(backend: object, spec: object, batch_size: int, **_: object) -> float:
    """Timing without the time: runs one batch (so failures surface), openvino 'faster'."""
    pixels = np.zeros((batch_size, 224, 224, 3), np.uint8)
    backend.forward(pixels)  # type: ignore[attr-defined]
    return 100.0 * batch_size if "fails" in backend.name else float(batch_size)  # type: ignore[attr-defined]


def test_running_out_of_device_memory_lowers_the_batch_ceiling(lite0: ModelParts) -> None:
    torch_backend = TorchBackend(lite0.module, lite0.spec.data_config, lite0.device)
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    backend = FailsAbove(torch_backend, 3, oom)
    runtime = ModelRuntime(
        spec=lite0.spec,
        backend=backend,
        preprocessor=lite0.preprocessor,
        device="cpu",
        batch_size=8,
        choice=Choice(Candidate("torch", "fp16"), 8, "test"),
        module=lite0.module,
    )
    images = [lite0.preprocessor(jpeg(name)) for name in ("coffee", "chelsea")] * 4
    results = runtime.predict_batch(images)
    expected = torch_backend.forward(np.stack(images))
    assert len(results) == 8 and all(isinstance(r, ModelOutputs) for r in results)
    for got, want in zip(results, expected.rows(), strict=True):
        np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-5)  # type: ignore[union-attr]
    assert backend.sizes == [8, 4, 2, 2, 2, 2]  # halved until it fit, then kept there
    assert runtime.largest_batch == 2
    (warning,) = runtime.fallbacks.warnings
    assert "out of memory at a batch of 4" in warning and "2 images at a time" in warning
    assert runtime.fallbacks.counts() == {"oom_split": 2}
    backend.sizes.clear()
    runtime.predict_batch(images[:3])
    assert backend.sizes == [2, 1]  # later batches start at the ceiling


def test_out_of_memory_at_one_image_fails_that_batch_only(lite0: ModelParts) -> None:
    torch_backend = TorchBackend(lite0.module, lite0.spec.data_config, lite0.device)
    runtime = ModelRuntime(
        spec=lite0.spec,
        backend=FailsAbove(torch_backend, 0, torch.OutOfMemoryError("out of memory")),
        preprocessor=lite0.preprocessor,
        device="cpu",
        batch_size=2,
        choice=Choice(Candidate("torch", "fp16"), 2, "test"),
        module=lite0.module,
    )
    with pytest.raises(torch.OutOfMemoryError):
        runtime.predict_batch([lite0.preprocessor(jpeg("coffee"))] * 2)


def test_batch_sizes_that_do_not_fit_are_not_measured(
    lite0: ModelParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_backend = TorchBackend(lite0.module, lite0.spec.data_config, lite0.device)
    backend = FailsAbove(torch_backend, 4, torch.OutOfMemoryError("CUDA out of memory"))
    monkeypatch.setattr(selection, "images_per_second", fake_speed)
    size = selection.preferred_batch_size(backend, lite0.spec, lite0.device)  # type: ignore[arg-type]
    assert size == 4 and backend.sizes == [1, 2, 4, 8]  # 16 never tried


def test_uploads_fall_back_to_pageable_memory_when_pinning_fails(lite0: ModelParts) -> None:
    # A CUDA backend's upload path on a device with no driver: pinning raises for real.
    fallbacks = Fallbacks()
    backend = TorchBackend(
        torch.nn.Identity(), lite0.spec.data_config, torch.device("meta"), fallbacks=fallbacks
    )
    backend._pin = True  # as on CUDA
    uploaded = backend._upload(torch.zeros((2, 4, 4, 3), dtype=torch.uint8))
    assert uploaded.device.type == "meta" and uploaded.shape == (2, 4, 4, 3)
    (warning,) = fallbacks.warnings
    assert "pageable memory" in warning
    assert fallbacks.counts() == {"pageable_copy": 1}


def test_explanations_move_to_the_cpu_when_the_device_has_no_room(
    lite0: ModelParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_deepcopy = copy.deepcopy

    def device_full(thing: object, memo: dict[int, object] | None = None) -> object:
        if memo is None and isinstance(thing, torch.nn.Module):  # a copy on the device
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_deepcopy(thing, memo)

    monkeypatch.setattr(copy, "deepcopy", device_full)
    fallbacks = Fallbacks()
    explainer = Explainer(lite0.module, lite0.spec, replicas=1, fallbacks=fallbacks)
    (warning,) = fallbacks.warnings
    assert "explanations run on the CPU" in warning
    pixels = lite0.preprocessor(jpeg("coffee"))
    maps = explainer.features(pixels, explainer.stage(3))
    with explainer.replica() as replica:
        assert replica is not lite0.module
        assert all(p.device.type == "cpu" for p in replica.parameters())
        original = dict(lite0.module.named_parameters())
        for name, parameter in replica.named_parameters():
            assert torch.equal(parameter, original[name])  # the same weights, a copy of them
            assert parameter.data_ptr() != original[name].data_ptr()
    assert maps.activations.shape[0] == explainer.stage(3).channels


async def test_an_explanation_that_runs_out_of_device_memory_is_a_503(
    lite0: ModelParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    explainer = Explainer(lite0.module, lite0.spec, replicas=1)

    def out_of_memory(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(explainer, "features", out_of_memory)
    inspector = InProcessInspector(
        explainer,
        serving=lambda: ("torch-cuda-fp16", "fp16", "cuda:0"),
        concurrency=1,
        queue=1,
        registry=CollectorRegistry(),
        version="default",
    )
    with pytest.raises(Unavailable, match="ran out of memory"):
        await inspector.features(lite0.preprocessor(jpeg("coffee")), 3)
    assert describe_error(Unavailable("x"))[:2] == (503, "unavailable")

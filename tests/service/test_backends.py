"""Backends: OpenVINO against the torch reference, the accuracy gate, cached choices and IR."""

from pathlib import Path

import numpy as np
import pytest
import torch

from service.model import backend_search, openvino_backend, selection
from service.model.backend import InferenceBackend, TorchBackend
from service.model.gate import GATE_IMAGES, check, outputs
from service.model.model_io import ModelOutputs
from service.model.runtime import load_parts, load_runtime
from service.model.samples import sample_images
from service.model.selection import Candidate, ModelParts, build, candidates
from service.settings import Settings
from tests.conftest import lite0_settings, pinned_settings

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> ModelParts:
    return load_parts(lite0_settings(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def gate_images(lite0: ModelParts) -> np.ndarray:
    samples = sample_images(GATE_IMAGES, seed=2)
    images = np.stack([lite0.preprocessor.pixels(i) for i in samples])
    assert len(images) >= 200
    return images


class Noisy:
    """A backend that is off by a little: the gate must notice."""

    name = "noisy"

    def __init__(self, inner: InferenceBackend) -> None:
        self._inner = inner

    def forward(self, batch: np.ndarray) -> ModelOutputs:
        out = self._inner.forward(batch)
        rng = np.random.default_rng(0)
        embeddings = out.embedding + 0.1 * rng.standard_normal(out.embedding.shape).astype(
            np.float32
        )
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        probabilities = np.roll(out.probabilities, 1, axis=1)  # every top-1 moves
        return ModelOutputs(probabilities, embeddings)


def test_openvino_fp32_passes_the_gate_with_real_weights(
    lite0: ModelParts, gate_images: np.ndarray, tmp_path: Path
) -> None:
    reference = outputs(TorchBackend(lite0.module, lite0.spec.data_config, CPU), gate_images)
    backend = build(Candidate("openvino", "fp32"), lite0, lite0_settings(tmp_path))
    result = check(backend, "fp32", gate_images, reference, real_weights=True)
    assert result.passed, result.reason
    assert result.top1_agreement is not None and result.top1_agreement >= 0.99
    assert result.median_embedding_cosine >= 0.99


def test_the_gate_rejects_a_backend_that_drifts(lite0: ModelParts, gate_images: np.ndarray) -> None:
    torch_backend = TorchBackend(lite0.module, lite0.spec.data_config, CPU)
    reference = outputs(torch_backend, gate_images)
    result = check(Noisy(torch_backend), "bf16", gate_images, reference, real_weights=True)
    assert not result.passed
    assert "top-1 agreement" in result.reason and "embedding cosine" in result.reason
    random_weights = check(Noisy(torch_backend), "bf16", gate_images, reference, real_weights=False)
    assert random_weights.top1_agreement is None and "embedding cosine" in random_weights.reason


def test_openvino_on_resnet50_random_weights_has_the_right_shapes(tmp_path: Path) -> None:
    settings = pinned_settings(tmp_path, weights="random")
    resnet50 = load_parts(settings)
    assert not resnet50.real_weights
    images = np.stack([resnet50.preprocessor.pixels(i) for i in sample_images(16, seed=5)])
    backend = build(Candidate("openvino", "fp32"), resnet50, settings)
    out = backend.forward(images)
    assert out.probabilities.shape == (16, 1000) and out.embedding.shape == (16, 2048)
    assert np.allclose(np.linalg.norm(out.embedding, axis=1), 1, atol=1e-4)
    reference = outputs(TorchBackend(resnet50.module, resnet50.spec.data_config, CPU), images)
    assert check(backend, "fp32", images, reference, real_weights=False).passed


def test_auto_choice_is_gated_measured_and_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=None)
    first = load_runtime(settings)
    choice = first.choice
    assert {m["candidate"] for m in choice.measurements} == {"torch/fp32", "openvino/fp32"}
    fastest = max(choice.measurements, key=lambda m: float(m["img_per_s"]))  # type: ignore[arg-type]
    assert str(choice.candidate) == fastest["candidate"]
    assert choice.batch_size in selection.BATCH_SIZES["cpu"]
    assert list((tmp_path / "models").glob("choice-*.json"))

    def no_second_search(*_: object, **__: object) -> None:
        raise AssertionError("the cached choice should have been used")

    monkeypatch.setattr(backend_search, "evaluate", no_second_search)
    monkeypatch.setattr(selection, "preferred_batch_size", no_second_search)
    again = load_runtime(settings)
    assert again.choice.candidate == choice.candidate and again.batch_size == choice.batch_size


def test_int8_ir_is_cached_on_disk(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = lite0_settings(tmp_path)
    quick = {"calibration_images": 32, "fast": True}  # the search's quick pass: same caching
    build(Candidate("openvino", "int8"), lite0, settings, **quick)  # type: ignore[arg-type]
    (artefacts,) = (tmp_path / "models").glob("openvino-int8-*")
    assert (artefacts / "model.xml").exists() and (artefacts / "model.bin").exists()

    def no_quantization(*_: object) -> None:
        raise AssertionError("a cached IR must not be quantized again")

    monkeypatch.setattr(openvino_backend, "_quantize", no_quantization)
    again = build(Candidate("openvino", "int8"), lite0, settings, **quick)  # type: ignore[arg-type]
    assert again.name == "openvino-cpu-int8"
    with pytest.raises(AssertionError, match="quantized again"):  # another recipe: not cached
        build(Candidate("openvino", "int8"), lite0, settings, calibration_images=16, fast=True)


def test_unavailable_combinations_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"fp16.*not available on cpu"):
        candidates(Settings(data_dir=tmp_path, precision="fp16"), CPU)
    with pytest.raises(ValueError, match="available"):
        candidates(Settings(data_dir=tmp_path, backend="torch", precision="int8"), CPU)
    pinned = candidates(Settings(data_dir=tmp_path, backend="openvino", precision="fp32"), CPU)
    assert pinned == [Candidate("openvino", "fp32")]

"""Model runtime: weights sources, fallback, outputs of one forward."""

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import safetensors.torch

from service.model.load_error import ModelLoadError
from service.model.runtime import ModelRuntime, load_runtime
from service.model.weights import LITE0_MODEL, WeightsUnavailable, load_model
from service.settings import DEFAULT_MODEL
from tests.conftest import lite0_settings, pinned_settings
from tests.photos import jpeg


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty Hugging Face cache with HF_HUB_OFFLINE set, as on a machine with no internet."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory) -> ModelRuntime:
    return load_runtime(pinned_settings(tmp_path_factory.mktemp("data"), weights="random"))


def test_unpinned_weights_fall_back_to_offline_lite0_loudly(offline_hub: None) -> None:
    loaded = load_model(DEFAULT_MODEL, None)
    assert loaded.model_id == LITE0_MODEL
    assert loaded.weights == "lite0-package"
    assert any("FALLBACK" in w and DEFAULT_MODEL in w for w in loaded.warnings)


def test_pinned_pretrained_fails_fast_with_the_ways_out(offline_hub: None) -> None:
    with pytest.raises(WeightsUnavailable) as failure:
        load_model(DEFAULT_MODEL, "pretrained")
    message = str(failure.value)
    assert DEFAULT_MODEL in message and "HF_HUB_OFFLINE" in message
    assert "RESNET_SERVE_WEIGHTS" in message


def test_weights_file_loads_the_same_model(tmp_path: Path) -> None:
    packaged = load_model(LITE0_MODEL, "lite0-package")
    path = tmp_path / "lite0.safetensors"
    safetensors.torch.save_file(packaged.module.state_dict(), str(path))
    from_file = load_model(LITE0_MODEL, str(path))
    assert from_file.weights == "file:lite0.safetensors"
    assert from_file.weights_digest != packaged.weights_digest
    for name, tensor in packaged.module.state_dict().items():
        assert from_file.module.state_dict()[name].equal(tensor)


@pytest.mark.parametrize(
    ("model_id", "weights", "message"),
    [
        ("no_such_model_xyz", "random", "no_such_model_xyz"),
        (DEFAULT_MODEL, "/nonexistent/weights.pth", "neither a file"),
        (DEFAULT_MODEL, "lite0-package", "RESNET_SERVE_MODEL=tf_efficientnet_lite0"),
    ],
)
def test_bad_configuration_is_a_clear_error(model_id: str, weights: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(model_id, weights)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(LITE0_MODEL, str(path))


def test_random_weights_are_flagged_and_reproducible() -> None:
    first, second = load_model(DEFAULT_MODEL, "random"), load_model(DEFAULT_MODEL, "random")
    assert any("RANDOM WEIGHTS" in w for w in first.warnings)
    assert first.module.fc.weight.equal(second.module.fc.weight)


def test_resnet50_gives_probabilities_and_unit_embeddings(resnet50: ModelRuntime) -> None:
    assert resnet50.spec.embedding_dim == 2048 and resnet50.spec.num_classes == 1000
    assert resnet50.spec.data_config["crop_pct"] == 0.875
    assert resnet50.spec.data_config["interpolation"] == "bilinear"
    (prediction,) = resnet50.predict_batch([resnet50.preprocessor(jpeg("coffee"))])
    assert prediction.probabilities.shape == (1000,)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert prediction.embedding.shape == (2048,)
    assert np.linalg.norm(prediction.embedding) == pytest.approx(1.0, abs=1e-4)


def test_batch_and_single_results_agree(resnet50: ModelRuntime) -> None:
    images = [resnet50.preprocessor(jpeg(name)) for name in ("coffee", "chelsea", "rocket")]
    batched = resnet50.predict_batch(images)
    for image, in_batch in zip(images, batched, strict=True):
        (alone,) = resnet50.predict_batch([image])
        np.testing.assert_allclose(alone.probabilities, in_batch.probabilities, atol=1e-5)
        np.testing.assert_allclose(alone.embedding, in_batch.embedding, atol=1e-4)


def test_fingerprint_changes_with_weights(resnet50: ModelRuntime, tmp_path: Path) -> None:
    lite0 = load_runtime(lite0_settings(tmp_path))
    assert lite0.spec.fingerprint != resnet50.spec.fingerprint
    assert lite0.spec.embedding_dim == 1280  # from the model, never a constant

"""A ready-to-run model: spec + preprocessing + backend, loaded and warmed up."""

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from service.images import Preprocessor
from service.model.backend import InferenceBackend, ModelOutputs, resolve_device
from service.model.selection import Choice, ModelParts, choose
from service.model.spec import ModelSpec
from service.model.weights import RANDOM, load_model
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRuntime:
    spec: ModelSpec
    backend: InferenceBackend
    preprocessor: Preprocessor
    device: str
    batch_size: int  # the batcher's max batch size: configured, or measured for this backend
    choice: Choice

    def predict_batch(self, images: list[np.ndarray]) -> list[ModelOutputs]:
        """Run on the batcher's owner thread: stack the pixels, forward once, split per image."""
        return list(self.backend.forward(np.stack(images)).rows())

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """First calls allocate and pick kernels; pay that before declaring ready."""
        for size in batch_sizes:
            started = time.perf_counter()
            self.predict_batch([np.zeros(self.preprocessor.pixel_shape, dtype=np.uint8)] * size)
            log.info("warm-up batch %d took %.0f ms", size, 1000 * (time.perf_counter() - started))


def load_parts(settings: Settings) -> ModelParts:
    """Device, model with weights, spec and preprocessing: what every backend is built from."""
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)
    loaded = load_model(settings.model, settings.weights)
    spec = ModelSpec.of(loaded)
    preprocessor = Preprocessor(spec.data_config, max_pixels=settings.max_image_pixels)
    return ModelParts(device, loaded.module, spec, preprocessor, loaded.weights != RANDOM)


def load_runtime(settings: Settings) -> ModelRuntime:
    """Load the configured model and backend; raises ModelLoadError with a way out."""
    parts = load_parts(settings)
    choice, backend = choose(parts, settings)
    spec = parts.spec
    log.info(
        "model %s weights=%s dim=%d backend=%s batch=%d fingerprint=%s (%s)",
        spec.model_id,
        spec.weights,
        spec.embedding_dim,
        backend.name,
        choice.batch_size,
        spec.fingerprint,
        choice.reason,
    )
    return ModelRuntime(
        spec=spec,
        backend=backend,
        preprocessor=parts.preprocessor,
        device=str(parts.device),
        batch_size=choice.batch_size,
        choice=choice,
    )

"""A ready-to-run model: spec + preprocessing + backend, loaded and warmed up."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.errors import InvalidInput
from service.images import Preprocessor
from service.model.backend import BucketedBackend, InferenceBackend, ModelOutputs, resolve_device
from service.model.device_jpeg import DeviceJpegDecoder, JpegUpload
from service.model.selection import Choice, ModelParts, choose
from service.model.spec import ModelSpec
from service.model.weights import RANDOM, load_model
from service.settings import Settings

log = logging.getLogger(__name__)


# What the batcher carries to the model: host-decoded pixels, or a JPEG for the device.
ModelInput = np.ndarray | JpegUpload
# Per image: its outputs, or why its JPEG did not decode on the device (its request: 422).
ModelResult = ModelOutputs | InvalidInput


@dataclass(frozen=True)
class ModelRuntime:
    spec: ModelSpec
    backend: InferenceBackend
    preprocessor: Preprocessor
    device: str
    batch_size: int  # the batcher's max batch size: configured, or measured for this backend
    choice: Choice
    module: torch.nn.Module  # the fp32 reference model the backends were built from
    jpeg_decoder: DeviceJpegDecoder | None = None  # None: every image is decoded on the host

    def predict_batch(self, items: Sequence[ModelInput]) -> list[ModelResult]:
        """Run on the batcher's owner thread: one batch, one forward, one result per item."""
        uploads = [item for item in items if isinstance(item, JpegUpload)]
        if not uploads:
            return list(self.backend.forward(np.stack(items)).rows())  # type: ignore[arg-type]
        assert self.jpeg_decoder is not None, "JPEG uploads reach only a runtime that decodes"
        decoded = iter(self.jpeg_decoder.decode(uploads))
        device = self.jpeg_decoder.device
        images: list[torch.Tensor | InvalidInput] = [
            next(decoded) if isinstance(item, JpegUpload) else torch.from_numpy(item).to(device)
            for item in items
        ]
        good = [image for image in images if isinstance(image, torch.Tensor)]
        rows = iter(self.backend.forward(_as_batch(good)).rows() if good else ())
        return [image if isinstance(image, InvalidInput) else next(rows) for image in images]

    def warm_up(self) -> None:
        """First calls allocate, pick kernels and compile; pay that before declaring ready.

        A bucketed (compiled) backend is warmed at every bucket up to the batch size, so no
        shape compiles under traffic.
        """
        sizes = {1, self.batch_size}
        if isinstance(self.backend, BucketedBackend):
            sizes |= {size for size in self.backend.buckets if size <= self.batch_size}
        for size in sorted(sizes):
            started = time.perf_counter()
            self.predict_batch([np.zeros(self.preprocessor.pixel_shape, dtype=np.uint8)] * size)
            log.info("warm-up batch %d took %.0f ms", size, 1000 * (time.perf_counter() - started))


def _as_batch(images: list[torch.Tensor]) -> np.ndarray | torch.Tensor:
    """One upload per batch: a device tensor stays on the device; CPU tensors become numpy."""
    batch = torch.stack(images)
    return batch.numpy() if batch.device.type == "cpu" else batch


def jpeg_decoder_for(
    settings: Settings, device: torch.device, preprocessor: Preprocessor
) -> DeviceJpegDecoder | None:
    """Device JPEG decode: on CUDA by default (nvJPEG), anywhere when asked for (tests)."""
    wanted = settings.jpeg_decode == "device" or (
        settings.jpeg_decode == "auto" and device.type == "cuda"
    )
    if not wanted:
        return None
    try:
        return DeviceJpegDecoder(preprocessor, device)
    except ValueError as exc:  # a preprocessing step with no tensor version
        log.warning("JPEG decode stays on the host: %s", exc)
        return None


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
        module=parts.module,
        jpeg_decoder=jpeg_decoder_for(settings, parts.device, parts.preprocessor),
    )

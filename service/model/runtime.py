"""A ready-to-run model: spec + preprocessing + backend, loaded and warmed up."""

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from service import extras
from service.errors import InvalidInput
from service.images import Preprocessor
from service.model.backend import BucketedBackend, InferenceBackend, resolve_device
from service.model.backend_search import choose, first_choice
from service.model.device_jpeg import DeviceJpegDecoder
from service.model.device_memory import BatchCeiling
from service.model.fallbacks import Fallbacks
from service.model.jpeg_upload import JpegUpload
from service.model.model_io import ModelInput, ModelResult
from service.model.selection import Choice, ModelParts
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
    module: torch.nn.Module  # the fp32 reference model the backends were built from
    jpeg_decoder: DeviceJpegDecoder | None = None  # None: every image is decoded on the host
    # What the host does differently from its configuration, and why (/readyz, /metrics).
    fallbacks: Fallbacks = field(default_factory=Fallbacks)
    ceiling: BatchCeiling = field(init=False)  # the batch size, lowered if the device OOMs

    def __post_init__(self) -> None:
        object.__setattr__(self, "ceiling", BatchCeiling(self.batch_size, self.fallbacks))

    @functools.cached_property
    def parameter_bytes(self) -> int:
        """The reference model's weights in memory (a new version needs a few times this)."""
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    @property
    def largest_batch(self) -> int:
        """The most images one forward runs: the batch size, or less once the device ran
        out of memory at it."""
        return self.ceiling.largest

    def predict_batch(self, items: Sequence[ModelInput]) -> list[ModelResult]:
        """Run on the batcher's owner thread: one batch, one forward, one result per item."""
        uploads = [item for item in items if isinstance(item, JpegUpload)]
        if not uploads:
            return list(self.ceiling.run(self.backend.forward, np.stack(items)))  # type: ignore[arg-type]
        assert self.jpeg_decoder is not None, "JPEG uploads reach only a runtime that decodes"
        decoded = iter(self.jpeg_decoder.decode(uploads))
        device = self.jpeg_decoder.device
        images: list[torch.Tensor | InvalidInput] = [
            next(decoded) if isinstance(item, JpegUpload) else torch.from_numpy(item).to(device)
            for item in items
        ]
        good = [image for image in images if isinstance(image, torch.Tensor)]
        rows = iter(self.ceiling.run(self.backend.forward, _as_batch(good)) if good else ())
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
    settings: Settings, device: torch.device, preprocessor: Preprocessor, fallbacks: Fallbacks
) -> DeviceJpegDecoder | None:
    """Device JPEG decode: on CUDA by default (nvJPEG), anywhere when asked for (tests).

    Only a decoder that passes its self-test is used; otherwise JPEGs stay on the host, with
    the reason in the log and /readyz (a broken library must not refuse good photos).
    """
    wanted = settings.jpeg_decode == "device" or (
        settings.jpeg_decode == "auto" and device.type == "cuda"
    )
    if not wanted:
        return None
    if not extras.installed("gpu"):  # Settings refuses jpeg_decode=device without it
        fallbacks.warn(
            "jpeg_decode",
            "JPEG decode stays on the host: " + extras.missing("gpu", "decoding on the GPU"),
        )
        return None
    try:
        decoder = DeviceJpegDecoder(preprocessor, device, fallbacks)
        decoder.self_test()
    except Exception as exc:  # any fault of the library or device: the host decodes instead
        fallbacks.warn(
            "jpeg_decode",
            f"JPEG decode stays on the host: the device decoder failed its self-test "
            f"({type(exc).__name__}: {exc})",
        )
        return None
    return decoder


def load_parts(settings: Settings) -> ModelParts:
    """Device, model with weights, spec and preprocessing: what every backend is built from."""
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    log.info(
        "loading %s (weights: %s) on %s", settings.model, settings.weights or "default", device
    )
    loaded = load_model(settings.model, settings.weights)
    spec = ModelSpec.of(loaded)
    log.info("loaded %s in %.1f s", spec.model_id, time.perf_counter() - started)
    preprocessor = Preprocessor(spec.data_config, max_pixels=settings.max_image_pixels)
    return ModelParts(device, loaded.module, spec, preprocessor, loaded.weights != RANDOM)


def load_runtime(settings: Settings) -> ModelRuntime:
    """Load the configured model on its final backend (searched now if not decided yet);
    for commands that need it (finetune, reindex). Raises ModelLoadError with a way out."""
    parts = load_parts(settings)
    choice, backend = choose(parts, settings)
    return _runtime(settings, parts, choice, backend)


def load_first_runtime(settings: Settings) -> tuple[ModelRuntime, ModelParts | None]:
    """Load the configured model on the backend to be ready on now, and the parts a
    background search needs when a faster backend is still to be searched for (else None)."""
    parts = load_parts(settings)
    choice, backend, search_due = first_choice(parts, settings)
    return _runtime(settings, parts, choice, backend), parts if search_due else None


def _runtime(
    settings: Settings, parts: ModelParts, choice: Choice, backend: InferenceBackend
) -> ModelRuntime:
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
        jpeg_decoder=jpeg_decoder_for(settings, parts.device, parts.preprocessor, parts.fallbacks),
        fallbacks=parts.fallbacks,
    )

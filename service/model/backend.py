"""The model backend seam: a batch of uint8 pixels in, probabilities and embeddings out."""

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from service.model.fallbacks import Fallbacks
from service.model.model_io import ModelOutputs

Pixels = np.ndarray | torch.Tensor


class InferenceBackend(Protocol):
    """One forward pass gives both outputs, so classify, embed and search share one queue."""

    name: str

    def forward(self, pixels: "Pixels") -> ModelOutputs:
        """pixels: (n, H, W, 3) uint8, resized and cropped; normalisation is the backend's.
        A tensor is already on the model's device (decoded there)."""
        ...


class ServingModule(torch.nn.Module):
    """The graph every backend runs: uint8 NHWC pixels -> (probabilities, unit embedding).

    Normalisation lives inside the graph, so it runs where the model runs (on the GPU when
    there is one) and the bytes that cross to the model are uint8, a quarter of float32.
    """

    scale: torch.Tensor  # buffers, set in __init__; declared so the type checker knows them
    shift: torch.Tensor

    def __init__(self, model: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model: Any = model  # timm's forward_features/forward_head are untyped
        std_ = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1 / (255 * std_))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / std_)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 -> (n, 3, H, W) float, (x / 255 - mean) / std."""
        # NHWC -> NCHW is a view with channels_last strides: no copy before the first conv.
        return pixels.permute(0, 3, 1, 2).float() * self.scale - self.shift

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.normalise(pixels)
        pooled = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        logits = self.model.get_classifier()(pooled)
        return logits.float().softmax(dim=-1), F.normalize(pooled.float(), dim=-1)


def serving_module(module: torch.nn.Module, data_config: dict[str, Any]) -> ServingModule:
    return ServingModule(module, data_config["mean"], data_config["std"]).eval()


class BucketedBackend:
    """Pads every batch up to the next of a few fixed sizes and drops the padding's outputs.

    A compiled graph (or a CUDA graph) is specialised to its input shape; with buckets it sees
    only these shapes, each compiled once at warm-up, never a recompile under traffic.
    """

    def __init__(self, inner: InferenceBackend, buckets: Sequence[int]) -> None:
        self.inner = inner
        self.buckets = tuple(sorted(buckets))
        self.name = inner.name

    def forward(self, pixels: Pixels) -> ModelOutputs:
        count = len(pixels)
        size = next((b for b in self.buckets if b >= count), count)
        if size > count:
            shape = (size - count, *pixels.shape[1:])
            if isinstance(pixels, torch.Tensor):
                padding = pixels.new_zeros(shape)
                pixels = torch.cat([pixels, padding])
            else:
                pixels = np.concatenate([pixels, np.zeros(shape, dtype=pixels.dtype)])
        outputs = self.inner.forward(pixels)
        return ModelOutputs(outputs.probabilities[:count], outputs.embedding[:count])


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of four below the max batch, and the max: 1, 4, 16, 64, 256 for 256."""
    buckets = {max_batch_size}
    size = 1
    while size < max_batch_size:
        buckets.add(size)
        size *= 4
    return tuple(sorted(buckets))


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"RESNET_SERVE_DEVICE={requested} but CUDA is not available here")
    return device


class TorchBackend:
    """Reference backend: eager PyTorch, channels_last.

    precision: fp32 (the reference), bf16 (CPU autocast) or fp16 (CUDA autocast). On CUDA the
    batch goes up once per call from pinned memory, as uint8.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        data_config: dict[str, Any],
        device: torch.device,
        precision: str = "fp32",
        compile: bool = False,
        fallbacks: Fallbacks | None = None,
    ):
        if precision not in _AUTOCAST:
            raise ValueError(f"torch backend precision must be one of {sorted(_AUTOCAST)}")
        self.device = device
        self.precision = precision
        # Pinned host memory makes the upload asynchronous; where it cannot be had (a locked
        # memory limit, a driver fault) the copy is pageable, slower but correct.
        self._pin = device.type == "cuda"
        self._fallbacks = fallbacks or Fallbacks()
        self.name = f"torch{'-compile' if compile else ''}-{device.type}-{precision}"
        served = (
            serving_module(module, data_config).to(device).to(memory_format=torch.channels_last)
        )
        # Static shapes: each batch size compiles once (BucketedBackend keeps them few).
        self._module: Any = torch.compile(served, dynamic=False) if compile else served

    @torch.inference_mode()
    def forward(self, pixels: Pixels) -> ModelOutputs:
        if isinstance(pixels, torch.Tensor):
            batch = pixels.to(self.device)  # decoded on the device: already there
        else:
            batch = self._upload(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8)))
        dtype = _AUTOCAST[self.precision]
        with torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            probabilities, embeddings = self._module(batch)
        return ModelOutputs(probabilities.cpu().numpy(), embeddings.cpu().numpy())

    def _upload(self, batch: torch.Tensor) -> torch.Tensor:
        """Host pixels to the device: one copy per batch, from pinned memory where it works."""
        if self.device.type == "cpu":
            return batch
        if self._pin:
            try:
                return batch.pin_memory().to(self.device, non_blocking=True)
            except RuntimeError as exc:
                self._pin = False
                self._fallbacks.warn(
                    "pinned_memory", f"uploads use pageable memory: pinning failed ({exc})"
                )
        self._fallbacks.count("pageable_copy")
        return batch.to(self.device)


_AUTOCAST: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

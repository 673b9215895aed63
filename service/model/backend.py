"""The model backend seam: a batch of preprocessed images in, probabilities and embeddings out."""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ForwardOutput:
    probabilities: np.ndarray  # (n, num_classes) float32, rows sum to 1
    embeddings: np.ndarray  # (n, embedding_dim) float32, unit length


class InferenceBackend(Protocol):
    """One forward pass gives both outputs, so classify, embed and search share one queue."""

    name: str

    def forward(self, batch: np.ndarray) -> ForwardOutput:
        """batch: (n, 3, H, W) float32, already normalised."""
        ...


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"RESNET_SERVE_DEVICE={requested} but CUDA is not available here")
    return device


class TorchBackend:
    """Reference backend: eager PyTorch, channels_last.

    precision: fp32 (the reference), bf16 (CPU autocast) or fp16 (CUDA autocast).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str = "fp32"):
        if precision not in _AUTOCAST:
            raise ValueError(f"torch backend precision must be one of {sorted(_AUTOCAST)}")
        self.device = device
        self.precision = precision
        self.name = f"torch-{device.type}-{precision}"
        timm_model: Any = module
        self._module: Any = timm_model.eval().to(device).to(memory_format=torch.channels_last)
        self._classifier: torch.nn.Module = timm_model.get_classifier()

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> ForwardOutput:
        images = torch.from_numpy(batch)
        if self.device.type == "cuda":
            images = images.pin_memory().to(self.device, non_blocking=True)
        images = images.contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST[self.precision]
        with torch.autocast(
            self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        ):
            pooled = self._module.forward_head(
                self._module.forward_features(images), pre_logits=True
            )
            logits = self._classifier(pooled)
        probabilities = logits.float().softmax(dim=-1)
        embeddings = F.normalize(pooled.float(), dim=-1)
        return ForwardOutput(probabilities.cpu().numpy(), embeddings.cpu().numpy())


_AUTOCAST: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

"""What an inspection answers, and the seam to whoever computes it (service.explain.inspector
in this process, service.transport.remote_inspector in a model worker, a Ray replica).

No torch here: HTTP workers receive these and do not load it.
"""

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

CamMethod = Literal["gradcam", "gradcam++", "eigencam", "layercam"]
CAM_METHODS: tuple[CamMethod, ...] = ("gradcam", "gradcam++", "eigencam", "layercam")


@dataclass(frozen=True)
class Stage:
    number: int  # 1-based: C1..Cn
    module: str  # e.g. layer4, blocks.6
    channels: int
    reduction: int  # input pixels per output pixel


@dataclass(frozen=True)
class CamResult:
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], over the model input
    class_id: int
    score: float  # the class's probability
    method: str
    stage: Stage


@dataclass(frozen=True)
class FeatureMaps:
    activations: np.ndarray  # (C, h, w) float32
    stage: Stage


@dataclass(frozen=True)
class StageShape:
    name: str  # C1..Cn
    module: str
    shape: tuple[int, int, int]  # channels, height, width at the model's input size


@dataclass(frozen=True)
class ModelCard:
    model: str
    weights: str
    warnings: tuple[str, ...]
    parameters: int
    gmacs: float  # multiply-accumulates per image at the input size, in billions
    input_size: tuple[int, int, int]
    preprocessing: dict[str, Any]
    stages: tuple[StageShape, ...]
    embedding_dim: int
    num_classes: int
    labels: str  # where the class names come from
    backend: str
    precision: str
    device: str


class ModelInspector(Protocol):
    async def cam(
        self, pixels: np.ndarray, class_id: int | None, method: str, layer: str | None
    ) -> CamResult: ...

    async def features(self, pixels: np.ndarray, stage: int) -> FeatureMaps: ...

    async def kernels(self) -> np.ndarray: ...

    async def card(self) -> ModelCard: ...

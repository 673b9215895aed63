"""The client side of explanations: the explainer lives where the model is (a model worker
or a Model replica on Ray)."""

import numpy as np

from service.explain.inspection import CamResult, FeatureMaps, ModelCard
from service.transport.operations import InspectorOperations as INSPECTOR
from service.transport.operations import Link


class RemoteInspector:
    """A ModelInspector in the model worker; errors and 429s come back as they were raised."""

    def __init__(self, client: Link) -> None:
        self._client = client

    async def cam(
        self, pixels: np.ndarray, class_id: int | None, method: str, layer: str | None
    ) -> CamResult:
        return await INSPECTOR.cam.call(self._client, pixels, class_id, method, layer)

    async def features(self, pixels: np.ndarray, stage: int) -> FeatureMaps:
        return await INSPECTOR.features.call(self._client, pixels, stage)

    async def kernels(self) -> np.ndarray:
        return await INSPECTOR.kernels.call(self._client)

    async def card(self) -> ModelCard:
        return await INSPECTOR.card.call(self._client)

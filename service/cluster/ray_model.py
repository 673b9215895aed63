"""The ingress's side of the model on Ray: uint8 pixels (or a JPEG for the device) to a
Model replica, which Ray Serve picks among the least busy."""

import asyncio
from dataclasses import replace
from typing import Any

from ray.serve.handle import DeploymentHandle

from batching import BatchOutcome, DeadlineExceeded, QueueFull
from service.cluster.link import RayLink
from service.errors import NotReady
from service.model.model_io import ModelInput, ModelOutputs
from service.model_client import HUNG_MESSAGE, ModelStatus, RecentRefusal
from service.workers.operations import HostedModelOperations as MODEL

# The replica answers a deadline itself; this margin only guards against a hung one.
_HUNG_MARGIN_S = 2.0
_CHECK_TIMEOUT_S = 2.0  # /readyz asks a replica; one this slow is not ready


class RayModel:
    """A ModelClient for the Model deployment."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self.link = RayLink(handle, "Model")
        self._status: ModelStatus | None = None
        self._refusal = RecentRefusal()
        self._in_flight = 0

    @property
    def ready(self) -> bool:
        return self._status is not None

    def status(self) -> ModelStatus:
        if self._status is None:
            raise NotReady("no Model replica has answered yet")
        # Per ingress replica: its images waiting at (or in) the model.
        return replace(self._status, queue_depth=self._in_flight)

    def admit(self, ahead: int = 0) -> None:
        self._refusal.check(waiting_there=self._in_flight > 0)

    async def check(self) -> None:
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_S):
                status = await MODEL.describe.call(self.link)
        except TimeoutError:
            raise NotReady(f"no Model replica answered in {_CHECK_TIMEOUT_S:.0f} s") from None
        self._status = status
        if status.hung:
            raise NotReady(HUNG_MESSAGE)

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        self._in_flight += 1
        try:
            async with asyncio.timeout(timeout_s + _HUNG_MARGIN_S):
                return await MODEL.infer.call(self.link, item, timeout_s, key)
        except QueueFull as refused:
            self._refusal.remember(refused)
            raise
        except TimeoutError:
            raise DeadlineExceeded(
                f"the Model replica did not answer in {timeout_s:.1f} s"
            ) from None
        finally:
            self._in_flight -= 1

    async def start(self) -> None:
        # Ray Serve starts the deployments together; the first call waits for a replica.
        self._status = await MODEL.describe.call(self.link)

    async def connected_if_listening(self) -> None:
        return None  # Ray Serve routes each call to a live replica

    async def stop(self, drain_timeout_s: float) -> None:
        return None  # the replicas are Ray's; this ingress holds nothing of them

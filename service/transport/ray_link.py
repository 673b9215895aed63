"""A Link to a Ray Serve deployment: the clients that reach worker processes over Unix
sockets (RemoteIndex, RemoteInspector) reach the Index and Model deployments through it.

Each deployment answers one method, `call(name, *args)`, dispatched to the implementation
the operation declarations name (service.transport.operations), so nothing is declared twice.
"""

import asyncio
from typing import Any, cast

from ray.exceptions import NodeDiedError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from service import tracing
from service.logs import current_request_id
from service.transport.rpc import WorkerUnavailable

# The cluster's part in a failure (a replica or node gone, a deployment not up yet): 503s,
# never the request's fault.
_UNAVAILABLE = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


class RayLink:
    """Calls into one deployment; its errors come back as they were raised there."""

    def __init__(self, handle: DeploymentHandle[Any], name: str) -> None:
        self._handle = handle
        self.name = name

    @property
    def connected(self) -> bool:
        # Serve routes each call to a live replica, or fails it: there is no connection.
        return True

    async def open(self) -> None:
        return None

    async def connected_if_listening(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def call(self, method: str, *args: Any, cancellable: bool = True) -> Any:
        # The request's id and trace context travel with the call, as over the Unix socket.
        context = (current_request_id.get(), tracing.carrier())
        response = cast("DeploymentResponse[Any]", self._handle.call.remote(method, context, *args))
        if not cancellable:  # a write, once sent, finishes whoever waits for it
            return await asyncio.shield(asyncio.ensure_future(self._result(response)))
        try:
            return await self._result(response)
        except asyncio.CancelledError:
            response.cancel()  # dropped there while it waits in the replica's queue
            raise

    async def _result(self, response: "DeploymentResponse[Any]") -> Any:
        try:
            return await response
        except RayTaskError as failed:
            # The replica raised it (QueueFull, InvalidInput, ...): the same error as in
            # one process, for the same answer.
            raise failed.cause from None
        except _UNAVAILABLE as exc:
            raise WorkerUnavailable(
                f"the {self.name} deployment is not reachable ({type(exc).__name__})"
            ) from None

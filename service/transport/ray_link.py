"""A Link to a Ray Serve deployment: the clients that reach worker processes over Unix
sockets (RemoteIndex, RemoteInspector) reach the Index and Model deployments through it.

Each deployment answers one method, `call(name, *args)`, dispatched to the implementation
the operation declarations name (service.transport.operations), so nothing is declared twice.
"""

import asyncio
from typing import Any, cast

import grpc
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


def payload_bytes(args: tuple[Any, ...]) -> int:
    """The bulk a call carries: its arrays and byte strings, and what says its own size (a
    HopBatch of images); the rest (ids, parameters, metadata) is small."""
    return sum(
        len(arg) if isinstance(arg, bytes | str) else getattr(arg, "nbytes", 0) for arg in args
    )


class RayLink:
    """Calls into one deployment; its errors come back as they were raised there.

    A call carrying up to `by_value_bytes` goes by value: its arguments pickled into a gRPC
    call straight to the replica (Serve's gRPC transport). A larger one goes by reference:
    through Ray's actor call, its arrays as out-of-band buffers (inline up to
    RAY_max_direct_call_object_size, else in the object store). Measured on 2 cores
    (`python -m loadtest.bench.bench_ray floor`): by value 1.6-2.6 ms a call up to two
    images' pixels against 2.5-4.1 by reference, equal at four, slower from eight (9.3-9.9
    ms against 5.1-6.7: the pickled bytes are copied at each end and gRPC moves them in
    windows).
    """

    def __init__(self, handle: DeploymentHandle[Any], name: str, by_value_bytes: int = 0) -> None:
        # Both ways named: Serve's default for a handle can be changed by its environment.
        self._by_reference = handle.options(_by_reference=True)
        self._by_value = handle.options(_by_reference=False)
        self._by_value_bytes = by_value_bytes
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
        small = self._by_value_bytes > 0 and payload_bytes(args) <= self._by_value_bytes
        handle = self._by_value if small else self._by_reference
        response = cast("DeploymentResponse[Any]", handle.call.remote(method, context, *args))
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
        except (*_UNAVAILABLE, grpc.aio.AioRpcError) as exc:  # gRPC: the replica went away
            raise WorkerUnavailable(
                f"the {self.name} deployment is not reachable ({type(exc).__name__})"
            ) from None

"""RayLink, the clients' connection to a Ray Serve deployment: a caller that goes away
cancels its call there (a write excepted), and errors come back as the service's own."""

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from batching import QueueFull
from service.logs import current_request_id
from service.transport.ray_link import RayLink
from service.transport.rpc import WorkerUnavailable


class FakeResponse:
    def __init__(self, outcome: "asyncio.Future[Any]") -> None:
        self.outcome = outcome
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self) -> Any:
        return self.outcome.__await__()


class FakeHandle:
    """What RayLink uses of a DeploymentHandle: `handle.call.remote(name, context, *args)`."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.responses: list[FakeResponse] = []
        self.call = self
        self.by_value: FakeHandle | None = None

    def options(self, *, _by_reference: bool) -> "FakeHandle":
        if _by_reference:
            return self
        self.by_value = FakeHandle()  # Serve's gRPC transport
        return self.by_value

    def remote(self, *args: Any) -> FakeResponse:
        self.sent.append(args)
        response = FakeResponse(asyncio.get_running_loop().create_future())
        self.responses.append(response)
        return response


async def test_a_cancelled_caller_cancels_its_call_in_the_deployment() -> None:
    handle = FakeHandle()
    link = RayLink(handle, "Model")  # type: ignore[arg-type]
    token = current_request_id.set("req-7")
    call = asyncio.create_task(link.call("infer", "pixels", 5.0, "key"))
    current_request_id.reset(token)
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The request's id (and trace context: none, tracing is off) travel with the call.
    assert handle.sent == [("infer", ("req-7", None), "pixels", 5.0, "key")]
    assert handle.responses[0].cancelled


async def test_a_write_finishes_whoever_waits_for_it() -> None:
    handle = FakeHandle()
    link = RayLink(handle, "Index")  # type: ignore[arg-type]
    call = asyncio.create_task(link.call("put", "id", cancellable=False))
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not handle.responses[0].cancelled
    handle.responses[0].outcome.set_result(True)  # it still completes there


async def test_the_deployments_errors_come_back_as_the_services_own() -> None:
    handle = FakeHandle()
    link = RayLink(handle, "Model")  # type: ignore[arg-type]
    refused = QueueFull(64, 1.5, "queue full")

    async def failing(error: BaseException) -> None:
        call = asyncio.create_task(link.call("infer"))
        await asyncio.sleep(0)
        handle.responses[-1].outcome.set_exception(error)
        await call

    with pytest.raises(QueueFull) as raised:
        await failing(RayTaskError("call", "traceback", refused))
    assert raised.value is refused  # a 429 with its Retry-After, as in one process
    with pytest.raises(WorkerUnavailable, match="Model deployment is not reachable"):
        await failing(ActorDiedError())  # the replica went away: 503, not the input's fault


async def test_a_small_call_goes_by_value_and_a_large_one_by_reference() -> None:
    handle = FakeHandle()
    link = RayLink(handle, "Model", by_value_bytes=200_000)  # type: ignore[arg-type]
    one_image, two_images = np.zeros((1, 224, 224, 3), np.uint8), np.zeros((2, 224, 224, 3))
    calls = [
        asyncio.create_task(link.call("infer_many", one_image)),  # 150 kB
        asyncio.create_task(link.call("put", "id", two_images, {}, b"jpeg")),  # 2.4 MB
        asyncio.create_task(link.call("image", "id")),  # nothing but an id
        asyncio.create_task(link.call("put", "id", one_image, {}, bytes(60_000))),  # 210 kB
    ]
    await asyncio.sleep(0)
    assert handle.by_value is not None
    assert [sent[0] for sent in handle.by_value.sent] == ["infer_many", "image"]
    assert [sent[0] for sent in handle.sent] == ["put", "put"]
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_a_replica_lost_mid_grpc_call_is_unavailable_not_the_inputs_fault() -> None:
    handle = FakeHandle()
    link = RayLink(handle, "Model", by_value_bytes=1000)  # type: ignore[arg-type]
    call = asyncio.create_task(link.call("infer"))
    await asyncio.sleep(0)
    assert handle.by_value is not None
    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "stream reset"
    )
    handle.by_value.responses[0].outcome.set_exception(lost)
    with pytest.raises(WorkerUnavailable, match="Model deployment is not reachable"):
        await call

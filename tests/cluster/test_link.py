"""RayLink, the clients' connection to a Ray Serve deployment: a caller that goes away
cancels its call there (a write excepted), and errors come back as the service's own."""

import asyncio
from typing import Any

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

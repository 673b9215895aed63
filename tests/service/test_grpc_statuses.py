"""How the gRPC face ends a call for each kind of failure (service.oip.grpc_face): the status
a Triton client sees, and the retry hint of a refusal, with a recording call context."""

from typing import Any, NoReturn

import grpc
import pytest

from batching import DeadlineExceeded, QueueFull
from index.milvus_collection import MilvusUnavailable
from service.errors import InvalidInput, NotFound, NotReady, Unauthorized
from service.oip.grpc_face import _abort


class Ended(Exception):
    pass


class RecordingContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailers: Any = ()

    def invocation_metadata(self) -> Any:
        return ()

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailers = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code, self.details = code, details
        raise Ended


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("image 2: not an image"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("no model 'x'"), grpc.StatusCode.NOT_FOUND),
        (Unauthorized("API key missing"), grpc.StatusCode.UNAUTHENTICATED),
        (NotReady("the model is loading"), grpc.StatusCode.UNAVAILABLE),
        (MilvusUnavailable("Milvus at http://m:19530: down"), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("too late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
async def test_each_failure_ends_the_call_with_its_status(error: Exception, code: Any) -> None:
    context = RecordingContext()
    with pytest.raises(Ended):
        await _abort(context, error)
    assert context.code == code
    if code is not grpc.StatusCode.INTERNAL:
        assert context.details == str(error)
    else:
        assert "a bug" not in context.details  # internals are logged, not told


async def test_a_refusal_is_resource_exhausted_with_the_retry_hint() -> None:
    context = RecordingContext()
    with pytest.raises(Ended):
        await _abort(context, QueueFull(40, 2.2, "the queue is full"))
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(context.trailers) == {"retry-after": "3", "grpc-retry-pushback-ms": "3000"}


async def test_a_call_the_client_cancels_gives_up_its_place() -> None:
    """A call cancelled while its image waits is cancelled on the server too: the wait for
    the model is cancelled (the batcher then skips its image) and its admission ticket is
    given back, through a real grpc.aio server and channel."""
    import asyncio
    from types import SimpleNamespace

    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from loadtest.common.processes import free_port
    from service.oip.grpc_face import InferenceServicer
    from service.settings import Settings

    waiting, cancelled, closed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class WaitingFront:
        name = "resnet-serve"

        def serving(self, model: str, version: str | None) -> Any:
            ticket = SimpleNamespace(close=closed.set)
            return SimpleNamespace(pipeline=SimpleNamespace(admit=lambda priority: ticket))

        async def infer(self, serving: Any, request: Any) -> Any:
            waiting.set()
            try:
                await asyncio.Event().wait()  # an image queued behind others
            except asyncio.CancelledError:
                cancelled.set()
                raise

    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(WaitingFront(), Settings()),
        server,  # type: ignore[arg-type]
    )
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = service_pb2.ModelInferRequest(model_name="resnet-serve")
            image = request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
            image.contents.bytes_contents.append(b"jpeg")
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            await asyncio.wait_for(waiting.wait(), 30)
            call.cancel()
            await asyncio.wait_for(cancelled.wait(), 30)
            await asyncio.wait_for(closed.wait(), 30)
            with pytest.raises(asyncio.CancelledError):
                await call
    finally:
        await server.stop(None)

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

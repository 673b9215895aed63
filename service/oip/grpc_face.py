"""The protocol over gRPC: `inference.GRPCInferenceService` on its own port, served by
grpcio's asyncio server in the process's own event loop, beside HTTP (one process, or each
HTTP worker: the port is shared with SO_REUSEPORT, as the HTTP port is).

The service definition is Triton's (grpc_service.proto: the Open Inference Protocol's
service plus ModelConfig and ModelStatistics, which its clients and perf_analyzer call); its
generated stubs come with Triton's client package (`tritonclient.grpc`), so client and
server share one definition. Imported only when the gRPC face is on (the grpc extra).

Deadlines come from `grpc-timeout`; a cancelled call cancels its images (dropped from the
batcher if their batch has not started); the API key comes from the `authorization`
(`Bearer KEY`) or `x-api-key` metadata; refusals are RESOURCE_EXHAUSTED with `retry-after`
and `grpc-retry-pushback-ms` in the trailing metadata; a model not ready is UNAVAILABLE.
"""

import asyncio
import hmac
import logging
import math
from typing import Any, NoReturn, Protocol

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from batching import DeadlineExceeded, Priority, QueueFull
from service import tracing
from service.admission import current_priority, current_ticket
from service.errors import InvalidInput, Unauthorized, describe_error
from service.http.access import presented_key, requires_key
from service.http.admission import lowered
from service.http.limits import limit_bytes
from service.oip.front import InferenceFront
from service.oip.model_face import InferRequest, RequestedOutput
from service.oip.tensors import BYTES, Tensor, checked_shape, from_raw, to_raw
from service.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
# Probes come from orchestrators that hold no key, as /healthz and /v2/health do.
_OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
_STATUS_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class CallContext(Protocol):
    """What the servicer uses of a call's context: grpcio's own (this process's server) or
    an adapter of Ray Serve's (its gRPC proxy, service.cluster.grpc_ingress)."""

    def invocation_metadata(self) -> Any: ...

    def time_remaining(self) -> float | None: ...

    def set_trailing_metadata(self, metadata: Any) -> None: ...

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn: ...


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, front: InferenceFront, settings: Settings) -> None:
        self._front = front
        key = settings.api_key
        self._key = None if key is None else key.get_secret_value().encode()
        self._key_scope = settings.api_key_scope

    async def ServerLive(self, request: Any, context: CallContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: CallContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=self._front.ready(self._front.name, None))

    async def ModelReady(self, request: Any, context: CallContext) -> Any:
        ready = self._front.ready(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: CallContext) -> Any:
        await self._guard(context, "ServerMetadata")
        return json_format.ParseDict(
            self._front.server_metadata(), service_pb2.ServerMetadataResponse()
        )

    async def ModelMetadata(self, request: Any, context: CallContext) -> Any:
        await self._guard(context, "ModelMetadata")
        try:
            described = await self._front.metadata(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        return json_format.ParseDict(described, service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request: Any, context: CallContext) -> Any:
        await self._guard(context, "ModelConfig")
        try:
            config = await self._front.config(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        return json_format.ParseDict({"config": config}, service_pb2.ModelConfigResponse())

    async def ModelStatistics(self, request: Any, context: CallContext) -> Any:
        await self._guard(context, "ModelStatistics")
        try:
            stats = await self._front.statistics_of(request.name, request.version)
        except Exception as exc:
            await _abort(context, exc)
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def ModelInfer(self, request: Any, context: CallContext) -> Any:
        metadata = {key: value for key, value in context.invocation_metadata()}
        carrier = {
            key: str(metadata[key]) for key in ("traceparent", "tracestate") if key in metadata
        }
        with tracing.server_span("grpc ModelInfer", carrier, request_id=request.id):
            return await self._infer(request, context, metadata)

    async def _infer(self, request: Any, context: CallContext, metadata: dict[str, Any]) -> Any:
        await self._guard(context, "ModelInfer")
        try:
            infer_request = _infer_request(request)
            serving = self._front.serving(request.model_name, request.model_version)
            priority = lowered(Priority.INTERACTIVE, str(metadata.get("x-priority", "")))
            ticket = serving.pipeline.admit(priority)  # the door: refused before any work
            token = current_ticket.set(ticket)
            lowered_to = current_priority.set(priority)
            try:
                remaining = context.time_remaining()
                answering = self._front.infer(serving, infer_request)
                if remaining is None:
                    version, answer = await answering
                else:
                    version, answer = await _within(answering, remaining)
            finally:
                current_ticket.reset(token)
                current_priority.reset(lowered_to)
                ticket.close()
        except Exception as exc:
            await _abort(context, exc)
        response = service_pb2.ModelInferResponse(
            model_name=self._front.name, model_version=version, id=request.id
        )
        for tensor in answer.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(to_raw(tensor))
        return response

    async def _guard(self, context: CallContext, method: str) -> None:
        if self._key is None or method in _OPEN_METHODS:
            return
        if not requires_key("POST", SERVICE + method, self._key_scope):
            return
        metadata = {k.lower().encode(): _as_bytes(v) for k, v in context.invocation_metadata()}
        presented = presented_key(metadata)
        if presented is None or not hmac.compare_digest(presented, self._key):
            problem = "missing" if presented is None else "wrong"
            await _abort(
                context,
                Unauthorized(
                    f"API key {problem}: send it as 'authorization: Bearer <key>' or "
                    "'x-api-key' metadata"
                ),
            )


async def _within(answering: Any, remaining_s: float) -> Any:
    try:
        return await asyncio.wait_for(answering, max(remaining_s, 0.001))
    except TimeoutError:
        raise DeadlineExceeded("the call's deadline passed before its answer") from None


def _infer_request(request: Any) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: give one per input"
        )
    inputs = []
    for index, described in enumerate(request.inputs):
        shape = checked_shape(described.name, list(described.shape))
        if raw:
            inputs.append(from_raw(described.name, described.datatype, shape, raw[index]))
        else:
            inputs.append(_from_contents(described, shape))
    outputs = []
    for described in request.outputs:
        k = 0
        if "classification" in described.parameters:
            k = described.parameters["classification"].int64_param
            if k <= 0:
                raise InvalidInput(f"classification must be a positive integer, not {k}")
        outputs.append(RequestedOutput(described.name, int(k)))
    return InferRequest(inputs, outputs, request.id)


def _from_contents(described: Any, shape: tuple[int, ...]) -> Tensor:
    """The typed `contents` form: BYTES as bytes_contents, FP32 as fp32_contents."""
    contents = described.contents
    if described.datatype == BYTES:
        return Tensor(described.name, BYTES, shape, list(contents.bytes_contents))
    if described.datatype == "FP32":
        values = contents.fp32_contents
        if len(values) != math.prod(shape):
            raise InvalidInput(
                f"input {described.name!r}: {len(values)} values, the shape holds "
                f"{math.prod(shape)}"
            )
        return Tensor(described.name, "FP32", shape, np.asarray(values, np.float32).reshape(shape))
    raise InvalidInput(
        f"input {described.name!r}: {described.datatype} in contents; send raw_input_contents"
    )


async def _abort(context: CallContext, exc: BaseException) -> NoReturn:
    """End the call with the status the error maps to; a bug is INTERNAL and logged."""
    if isinstance(exc, asyncio.CancelledError):
        raise exc
    status, _, message = describe_error(exc if isinstance(exc, Exception) else Exception())
    code = _STATUS_OF_HTTP.get(status, grpc.StatusCode.INTERNAL)
    if isinstance(exc, QueueFull):
        retry_s = max(1, math.ceil(exc.retry_after_s))
        context.set_trailing_metadata(
            (("retry-after", str(retry_s)), ("grpc-retry-pushback-ms", str(1000 * retry_s)))
        )
    await context.abort(code, message)
    raise AssertionError("context.abort returns only by raising")


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


async def start_grpc(front: InferenceFront, settings: Settings) -> grpc.aio.Server:
    """The gRPC face on settings.host:grpc_port, started."""
    largest = limit_bytes("batch", settings)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", largest),
            ("grpc.max_send_message_length", largest),
            ("grpc.so_reuseport", 1),  # each HTTP worker serves the port, as with HTTP
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(front, settings), server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("inference protocol over gRPC on %s (model %s)", address, front.name)
    return server

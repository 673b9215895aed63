"""OpenTelemetry traces: off unless the standard variables ask for them, then one trace per
request across every process it crosses.

On when `OTEL_TRACES_EXPORTER=otlp`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not true); the SDK
reads the rest (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, the exporter's headers and
timeouts, `OTEL_BSP_*` for batching, `OTEL_TRACES_SAMPLER`). Spans go over OTLP/HTTP with
protobuf (the `otel` extra). Off, nothing of OpenTelemetry is imported and every call here
is a check of one global.

Context crosses the service's own boundaries as a W3C `traceparent` carrier: the Unix-socket
RPC to the model and index workers carries it with each call (service.transport.rpc), a Ray
call carries it as an argument (service.transport.ray_link), and the HTTP and gRPC faces
take a caller's `traceparent`.
"""

import logging
import os
import time
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from service import extras

log = logging.getLogger(__name__)

Carrier = dict[str, str]
# Requests that are not traced: the probes, /metrics, the docs and the web page.
_UNTRACED = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/ui", "/static")

_tracer: Any = None  # an opentelemetry Tracer once configured; None: tracing is off


def wanted() -> bool:
    """Whether the environment asks for traces."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "otlp" or bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(role: str) -> None:
    """Start exporting this process's spans when the environment asks (once per process;
    `role` names the process: http, model-worker, index-worker, a Ray replica)."""
    global _tracer
    if _tracer is not None or not wanted():
        return
    if not extras.installed("otel"):
        log.warning("%s: off", extras.missing("otel", "OpenTelemetry tracing (OTEL_*)"))
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, take precedence.
    resource = Resource.create(
        {"service.name": "resnet-serve", "resnet_serve.role": role, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("resnet-serve")
    log.info("tracing on: spans of the %s process go over OTLP", role)


def shutdown() -> None:
    """Flush what is buffered (a process about to exit)."""
    if _tracer is not None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def on() -> bool:
    return _tracer is not None


def untraced(scope: MutableMapping[str, Any]) -> bool:
    """For FastAPI's telemetry: requests that start no trace."""
    return str(scope.get("path", "")).startswith(_UNTRACED)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span around the block, a child of the current one (nothing when tracing is off)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


@contextmanager
def server_span(name: str, carrier: Carrier | None, **attributes: Any) -> Iterator[None]:
    """The span of a call that arrived from elsewhere: a child of the caller's span when the
    carrier names one, else the root of a new trace."""
    if _tracer is None:
        yield
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    parent = extract(carrier or {})
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ):
        yield


@contextmanager
def continued(name: str, carrier: Carrier | None, **attributes: Any) -> Iterator[None]:
    """A call from another process: a child of the caller's span when the caller traced it,
    no span at all when it did not (background calls start no traces of their own)."""
    if _tracer is None or not carrier:
        yield
        return
    with server_span(name, carrier, **attributes):
        yield


def carrier() -> Carrier | None:
    """The current span's context to send along with a call (None when tracing is off)."""
    if _tracer is None:
        return None
    from opentelemetry.propagate import inject

    carried: Carrier = {}
    inject(carried)
    return carried


def set_attributes(**attributes: Any) -> None:
    """Add attributes to the current span (the request id, a status code)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def record(name: str, start_s: float, end_s: float, **attributes: Any) -> None:
    """A finished span from measured times (time.monotonic() seconds), a child of the
    current span: the queue wait and the forward pass, which the batcher measures."""
    if _tracer is None:
        return
    offset_ns = time.time_ns() - time.monotonic_ns()
    started = _tracer.start_span(
        name, start_time=int(start_s * 1e9) + offset_ns, attributes=attributes
    )
    started.end(end_time=int(end_s * 1e9) + offset_ns)


def captured() -> Any:
    """The current span's context, for a span to link to later (None when off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span().get_span_context()


class BatchSpans:
    """batching.BatchTracing for the model's batcher: a `batch` span per batch, linked to
    the spans of the requests it carried."""

    def capture(self) -> object:
        return captured()

    def batch(self, captured_contexts: list[object]) -> AbstractContextManager[None]:
        return linked_span("batch", captured_contexts, batch_size=len(captured_contexts))


def record_batch_timings(queued_s: float, run_s: float, batch_size: int) -> None:
    """The queue wait and the forward pass of an item just answered, as two spans."""
    if _tracer is None:
        return
    now = time.monotonic()
    record("queue wait", now - run_s - queued_s, now - run_s)
    record("forward", now - run_s, now, batch_size=batch_size)


@contextmanager
def linked_span(name: str, links: Sequence[Any], **attributes: Any) -> Iterator[None]:
    """A span of its own (a new trace) that links to the spans whose contexts are given: a
    batch, linked to the requests it carried."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context, trace

    link_list = [trace.Link(found) for found in links if found is not None and found.is_valid]
    with _tracer.start_as_current_span(
        name, context=context.Context(), links=link_list, attributes=attributes
    ):
        yield

"""A real OTLP/HTTP trace receiver on a free loopback port (for the tests and the tracing
benchmark): it decodes the protobuf export requests with OpenTelemetry's own proto package
and keeps every span."""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from loadtest.common.processes import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each linked span
    start_ns: int
    end_ns: int


def _values(pairs: Any) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        value = pair.value
        out[pair.key] = (
            getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
        )
    return out


@dataclass
class OtlpReceiver:
    port: int = field(default_factory=free_port)
    spans: list[ReceivedSpan] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._keep(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _keep(self, request: Any) -> None:
        received = [
            ReceivedSpan(
                span.name,
                span.trace_id.hex(),
                span.span_id.hex(),
                span.parent_span_id.hex(),
                _values(span.attributes),
                _values(resource_spans.resource.attributes),
                tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                span.start_time_unix_nano,
                span.end_time_unix_nano,
            )
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._arrived:
            self.spans += received
            self._arrived.notify_all()

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout_s: float) -> None:
        """Until `found(spans)` holds (event-driven: checked as each export arrives)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: found(list(self.spans)), timeout_s):
                names = sorted({(s.resource.get("resnet_serve.role"), s.name) for s in self.spans})
                raise AssertionError(f"spans never arrived; received {names}")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

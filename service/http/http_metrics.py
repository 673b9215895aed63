"""ASGI middleware measuring every request, once: counts and latency per route template and
status, and for a request a model version answered (the version it resolved at its start:
service.http.admission or service.routes.deps) the same per version, with `X-Model-Version`
on its response, so a client comparing versions knows which one it got and a canary's
errors and latency compare with the live version's on /metrics."""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

VERSION_HEADER = b"x-model-version"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HttpMetrics:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self._requests = Counter(
            "http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "http_request_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=registry,
            buckets=_BUCKETS,
        )
        self._version_responses = Counter(
            "model_version_responses",
            "Responses by the model version that answered, and their status",
            ["version", "status"],
            registry=registry,
        )
        self._version_latency = Histogram(
            "model_version_request_seconds",
            "Latency of requests a model version answered, by version and route",
            ["version", "route"],
            registry=registry,
            buckets=_BUCKETS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered_by: str | None = None

        async def measured_send(message: Message) -> None:
            nonlocal status, answered_by
            if message["type"] == "http.response.start":
                status = message["status"]
                serving = scope.get("state", {}).get("serving")
                if serving is not None:
                    answered_by = serving.name
                    headers = [*message.get("headers", []), (VERSION_HEADER, answered_by.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, measured_send)
        finally:
            seconds = time.perf_counter() - started
            # Route templates, not raw paths, keep label cardinality bounded.
            template = getattr(scope.get("route"), "path", "unmatched")
            self._requests.labels(scope["method"], template, str(status)).inc()
            self._latency.labels(scope["method"], template).observe(seconds)
            if answered_by is not None:
                self._version_responses.labels(answered_by, str(status)).inc()
                self._version_latency.labels(answered_by, template).observe(seconds)

"""`X-Model-Version` on every response a model version answered: the version the request
resolved at its start (service.routes.deps), so a client comparing versions knows which
one it got. /metrics carries the version too: `model_version_responses_total{version,
status}` and `model_version_request_seconds{version, route}`, so a canary's errors and
latency compare with the live version's."""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-model-version"


class ModelVersionHeader:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self._responses = Counter(
            "model_version_responses",
            "Responses by the model version that answered, and their status",
            ["version", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "model_version_request_seconds",
            "Latency of requests a model version answered, by version and route",
            ["version", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered_by: str | None = None

        async def tagged_send(message: Message) -> None:
            nonlocal answered_by
            if message["type"] == "http.response.start":
                serving = scope.get("state", {}).get("serving")
                if serving is not None:
                    answered_by = serving.name
                    self._responses.labels(serving.name, str(message["status"])).inc()
                    headers = [*message.get("headers", []), (HEADER, serving.name.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        finally:
            if answered_by is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                self._latency.labels(answered_by, route).observe(time.perf_counter() - started)

"""`X-Model-Version` on every response a model version answered: the version the request
resolved at its start (service.routes.deps), so a client comparing versions knows which
one it got; `model_version_responses_total{version}` counts them."""

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-model-version"


class ModelVersionHeader:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self._responses = Counter(
            "model_version_responses",
            "Responses by the model version that answered",
            ["version"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                serving = scope.get("state", {}).get("serving")
                if serving is not None:
                    self._responses.labels(serving.name).inc()
                    headers = [*message.get("headers", []), (HEADER, serving.name.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged_send)

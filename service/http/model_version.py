"""`X-Model-Version` on every response a model version answered: the version the request
resolved at its start (service.routes.deps), so a client comparing versions knows which
one it got."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-model-version"


class ModelVersionHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                serving = scope.get("state", {}).get("serving")
                if serving is not None:
                    headers = [*message.get("headers", []), (HEADER, serving.name.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged_send)

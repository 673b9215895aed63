"""A request id on every response (`X-Request-ID`) and on every log line written for it.

The client's id is kept when it is sane (short, printable, no spaces), so one id can follow a
request through the caller's systems; otherwise the service makes one.
"""

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing
from service.logs import current_request_id

HEADER = b"x-request-id"
_SANE = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_for(headers: dict[bytes, bytes]) -> str:
    offered = headers.get(HEADER, b"")
    return offered.decode() if _SANE.fullmatch(offered) else uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_for(dict(scope["headers"]))
        token = current_request_id.set(request_id)
        tracing.set_attributes(request_id=request_id)  # on the request's span, when traced

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tagged_send)
        finally:
            current_request_id.reset(token)

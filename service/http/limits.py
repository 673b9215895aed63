"""Every route's own body limit, enforced before anything is buffered.

A route says what its body carries where it is declared (`openapi_extra=... |
body_limit("image")`; the OpenAPI document shows it as `x-body-limit`), and the limit follows
from the settings: one image is at most MAX_UPLOAD_BYTES, a third more as base64 in JSON,
plus room for the other fields (metadata, a filter) and the multipart framing. A route that
declares nothing takes a small JSON body; the web page (a mounted app) takes a batch, as its
Batch tab uploads many images at once. The declared Content-Length is checked at the door
(413 before a byte is read); a chunked body is counted as it arrives and refused as soon as
it passes the limit.

Past its first MiB a body is large, and large bodies are bounded for the process as a whole,
so a flood of them costs neither memory nor the CPU the model needs (small ones, such as a
typical image, never wait): JSON bodies are held in memory whole until parsed (multipart
parts go to spooled files), so their bytes past the first MiB draw on one budget
(LARGE_JSON_BUDGET_BYTES); and only a few large bodies of any kind are read at once (two a
core): each one read is CPU (parsing, spooling) taken from the model, and 64 streams each
sent up to a route's limit are gigabytes. Past either bound a body gets 429 with
Retry-After, as soon as it passes its first MiB.
"""

import math
from typing import Any, Literal

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batching import QueueFull
from service.errors import PayloadTooLarge, error_response
from service.settings import Settings, available_cores

BodyKind = Literal["image", "two_images", "batch", "json"]
_KEY = "x-body-limit"
_FIELDS_BYTES = 64 * 1024  # metadata, a filter, top_k, the multipart framing of a few parts
_PART_FRAMING_BYTES = 1024  # a multipart part's boundary and headers
JSON_BODY_BYTES = 1024 * 1024  # a route that declares nothing: a JSON document, no images
FREE_BODY_BYTES = 1024 * 1024  # a body up to this is small: never bounded, never waits
LARGE_JSON_BUDGET_BYTES = 64 * 1024 * 1024  # JSON bytes past the free MiB, all bodies at once
LARGE_BODIES_PER_CORE = 2  # large bodies read at once, of any kind
_BUSY_RETRY_S = 1.0


def body_limit(kind: BodyKind) -> dict[str, Any]:
    """The openapi_extra of a route whose body carries `kind`."""
    return {_KEY: kind}


def limit_bytes(kind: str, settings: Settings) -> int:
    """The most bytes a body of `kind` may have under these settings."""
    # base64 is 4 bytes for 3; multipart sends the bytes as they are (the larger bounds both)
    image = math.ceil(settings.max_upload_bytes * 4 / 3) + _PART_FRAMING_BYTES
    if kind == "image":
        return image + _FIELDS_BYTES
    if kind == "two_images":
        return 2 * image + _FIELDS_BYTES
    if kind == "batch":  # multipart only: no base64
        files = settings.max_batch_files * (settings.max_upload_bytes + _PART_FRAMING_BYTES)
        return files + _FIELDS_BYTES
    return JSON_BODY_BYTES


def describe_limit(kind: str, settings: Settings) -> str:
    what = {
        "image": "one image",
        "two_images": "two images",
        "batch": f"up to {settings.max_batch_files} images",
    }.get(kind, "a JSON document")
    return f"{limit_bytes(kind, settings)} bytes ({what})"


class BodyLimit:
    def __init__(self, app: ASGIApp, routes: list[BaseRoute], settings: Settings) -> None:
        """`routes`: the API's routes with their full paths (service.app.api_routes)."""
        self.app = app
        self._routes = routes
        self._settings = settings
        self._by_route: dict[int, tuple[int, str]] = {}  # id(route) -> (bytes, description)
        self._large_json_held = 0  # bytes of JSON bodies past their free MiB, all requests
        self._large_bodies = 0  # bodies past their free MiB being read now
        self._large_bodies_at_once = LARGE_BODIES_PER_CORE * available_cores()

    def _limit(self, scope: Scope) -> tuple[int, str]:
        """The limit of the route the request goes to; a path under a mounted app (the web
        page, mounted after this middleware is added) takes a batch."""
        for route in self._routes:
            if route.matches(scope)[0] is Match.FULL:
                return self._of(route)
        for mounted in scope["app"].router.routes:
            if isinstance(mounted, Mount) and mounted.matches(scope)[0] is Match.FULL:
                return self._of(mounted)
        return self._of(None)

    def _of(self, route: BaseRoute | None) -> tuple[int, str]:
        known = self._by_route.get(id(route))
        if known is None:
            kind = _kind(route)
            known = limit_bytes(kind, self._settings), describe_limit(kind, self._settings)
            self._by_route[id(route)] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, described = self._limit(scope)
        message = f"request body is over this route's limit of {described}"
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await error_response(PayloadTooLarge(message), scope["path"])(scope, receive, send)
            return
        seen = 0
        held = 0  # this body's bytes drawn on the large-JSON budget
        large = False  # whether this body counts among the large ones being read
        is_json = headers.get(b"content-type", b"").startswith(b"application/json")

        async def counting_receive() -> Message:
            nonlocal seen, held, large
            received = await receive()
            if received["type"] == "http.request":
                seen += len(received.get("body", b""))
                if seen > max_bytes:  # chunked bodies have no content-length to check
                    raise PayloadTooLarge(message)
                if seen > FREE_BODY_BYTES and not large:
                    large = self._start_large_body()
                if is_json:
                    held += self._draw(max(0, seen - FREE_BODY_BYTES) - held)
            return received

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self._large_json_held -= held
            self._large_bodies -= large

    def _start_large_body(self) -> bool:
        """Count one more large body being read (one event loop: no lock needed)."""
        if self._large_bodies >= self._large_bodies_at_once:
            raise QueueFull(0, _BUSY_RETRY_S, "too many large bodies are arriving at once")
        self._large_bodies += 1
        return True

    def _draw(self, more: int) -> int:
        """Take `more` bytes of the large-JSON budget (one event loop: no lock needed)."""
        if more <= 0:
            return 0
        if self._large_json_held + more > LARGE_JSON_BUDGET_BYTES:
            raise QueueFull(0, _BUSY_RETRY_S, "too many large JSON bodies are arriving at once")
        self._large_json_held += more
        return more


def _kind(route: BaseRoute | None) -> str:
    if isinstance(route, Mount):
        return "batch"
    if isinstance(route, APIRoute):
        return str((route.openapi_extra or {}).get(_KEY, "json"))
    return "json"

"""Admission at the door: a request for the model that the model would refuse (queue full,
or past the latency target) gets its 429 before its body is read. Overload then costs almost
no CPU, refusals come back in milliseconds, and the images already admitted keep the cores.

The door admits against the queue of the version that will serve the request: it resolves
`?version=NAME` itself (and hands the resolved version on to the route, so both agree), so a
request pinned to an idle version is served while the live one is full, and the reverse.
Admitted requests are counted until their image reaches the model (service.admission). The
price of admitting at the door: under overload, an image the cache could have answered is
refused too.

Which requests: a route whose images go to the model says so where it is declared, with
`openapi_extra=... | USES_MODEL` (the OpenAPI document shows it as `x-admission: model`).
Explanations have their own limit and are not marked.
"""

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from batching import QueueFull
from service.admission import Door, current_ticket
from service.errors import InvalidInput, NotReady, error_response

USES_MODEL: dict[str, Any] = {"x-admission": "model"}


def model_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The routes marked USES_MODEL."""
    return [
        route
        for route in routes
        if isinstance(route, APIRoute)
        and (route.openapi_extra or {}).get("x-admission") == USES_MODEL["x-admission"]
    ]


class AdmitAtTheDoor:
    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self._routes = routes  # the model routes (model_routes)

    def _matched(self, scope: Scope) -> Scope | None:
        """The matching model route's child scope (its path parameters), or None."""
        for route in self._routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return child
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._matched(scope) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        door = _door(scope, matched.get("path_params", {}).get("version"))
        if door is None:  # starting, or a version that cannot serve: the route says why
            await self.app(scope, receive, send)
            return
        try:
            ticket = door.admit()
        except QueueFull as refused:
            await error_response(refused, scope["path"])(scope, receive, send)
            return
        token = current_ticket.set(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            current_ticket.reset(token)
            ticket.close()


def _door(scope: Scope, path_version: str | None) -> Door | None:
    """The pipeline of the version this request will be served by (`?version=`, or the
    inference protocol's `/versions/{version}` in the path, else the live one); the resolved
    version goes on to the route in the request's state."""
    state = scope["app"].state
    versions = getattr(state, "versions", None)
    pinned = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("version")
    version = pinned[-1] if pinned else path_version
    if versions is None:
        return getattr(state, "pipeline", None) if version is None else None
    try:
        serving = versions.serving(version)
    except (InvalidInput, NotReady):
        return None
    scope.setdefault("state", {})["serving"] = serving
    door: Door = serving.pipeline
    return door

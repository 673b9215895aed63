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

Classes: a route of bulk work (the batch routes) says so with `BULK_WORK` (`x-priority:
bulk`); every other model route is interactive. A request may ask for the lower class with
`X-Priority: bulk` (or `?priority=bulk`), never for a higher one than its route's: the
response's `X-Priority` says which class it was served in. The model's queue serves
interactive images first and refuses bulk ones first (batching.Batcher).

Clients (service.http.client_discipline): one that comes back before its Retry-After is held
for the rest of it and then refused; with CLIENT_MAX_IN_FLIGHT, one with that many requests
in flight is refused its next (429, Retry-After: 1) while others are served.
"""

import asyncio
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batching import Priority, QueueFull
from service import tracing
from service.admission import Door, current_priority, current_ticket
from service.errors import InvalidInput, NotReady, error_response
from service.http.client_discipline import (
    LONGEST_HOLD_S,
    InFlight,
    RetryBook,
    address_of,
    connection_of,
)

USES_MODEL: dict[str, Any] = {"x-admission": "model"}
BULK_WORK: dict[str, Any] = {"x-priority": "bulk"}
_CLASSES = {"interactive": Priority.INTERACTIVE, "bulk": Priority.BULK}


def model_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The routes marked USES_MODEL."""
    return [
        route
        for route in routes
        if isinstance(route, APIRoute)
        and (route.openapi_extra or {}).get("x-admission") == USES_MODEL["x-admission"]
    ]


def route_priority(route: APIRoute) -> Priority:
    return _CLASSES[(route.openapi_extra or {}).get("x-priority", "interactive")]


def request_priority(route_class: Priority, scope: Scope) -> Priority:
    """The class a request is served in: its route's, or a lower one it asks for
    (`?priority=` or `X-Priority`)."""
    asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("priority")
    value = asked[-1] if asked else dict(scope["headers"]).get(b"x-priority", b"").decode()
    return lowered(route_class, value)


def lowered(route_class: Priority, value: str) -> Priority:
    """`route_class`, or the lower class `value` names (empty: none asked for). Raises
    InvalidInput for a class that does not exist."""
    if not value:
        return route_class
    try:
        wanted = _CLASSES[value.strip().lower()]
    except KeyError:
        raise InvalidInput(
            f"priority {value!r}: 'interactive' or 'bulk' (a request may lower its class)"
        ) from None
    return max(route_class, wanted)  # BULK > INTERACTIVE: the lower of the two classes


class AdmitAtTheDoor:
    def __init__(self, app: ASGIApp, routes: list[APIRoute], client_max_in_flight: int = 0) -> None:
        self.app = app
        self._routes = [(route, route_priority(route)) for route in routes]  # model routes
        self._most_in_flight = client_max_in_flight
        self._retries = RetryBook()
        self._in_flight = InFlight()

    def _matched(self, scope: Scope) -> tuple[Scope, Priority] | None:
        """The matching model route's child scope (its path parameters) and class, or None."""
        for route, priority in self._routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return child, priority
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._matched(scope) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        child, route_class = matched
        door = _door(scope, child.get("path_params", {}).get("version"))
        if door is None:  # starting, or a version that cannot serve: the route says why
            await self.app(scope, receive, send)
            return
        try:
            priority = request_priority(route_class, scope)
        except InvalidInput as invalid:
            await error_response(invalid, scope["path"])(scope, receive, send)
            return
        # Retry-After is about the queue that refused, the version's, for the request's class:
        # a client refused bulk work may still send interactive work, and the reverse.
        serving = scope.get("state", {}).get("serving")
        client = f"{connection_of(scope)}@{getattr(serving, 'name', '')}#{priority.name}"
        address = address_of(scope)
        try:
            await self._hold_if_early(client)
            self._check_share(address)
            with tracing.span("admission", priority=priority.name.lower()):
                ticket = door.admit(priority)
        except QueueFull as refused:
            self._retries.refused(client, max(1, math.ceil(refused.retry_after_s)))
            await error_response(refused, scope["path"])(scope, receive, send)
            return
        tokens = current_ticket.set(ticket), current_priority.set(priority)
        self._in_flight.enter(address)
        try:
            await self.app(scope, receive, self._noting(client, priority, send))
        finally:
            self._in_flight.leave(address)
            current_ticket.reset(tokens[0])
            current_priority.reset(tokens[1])
            ticket.close()

    async def _hold_if_early(self, client: str) -> None:
        """A client back before its Retry-After waits out the rest of it (the event loop's
        timer: no worker held), then is refused."""
        early_s = self._retries.early_by(client)
        if early_s <= 0:
            return
        held_s = min(early_s, LONGEST_HOLD_S)
        await asyncio.sleep(held_s)
        raise QueueFull(
            0,
            max(early_s - held_s, 1.0),
            f"came back {early_s:.1f} s before Retry-After, and was held {held_s:.1f} s: "
            "honour Retry-After",
        )

    def _check_share(self, address: str) -> None:
        count = self._in_flight.count(address)
        if self._most_in_flight and count >= self._most_in_flight:
            raise QueueFull(
                count,
                1.0,
                f"{address} has {count} requests in flight here, the most one client may "
                f"(CLIENT_MAX_IN_FLIGHT={self._most_in_flight})",
            )

    def _noting(self, client: str, priority: Priority, send: Send) -> Send:
        """`send`, saying the class served in, and noting a 429 the route gave (the model
        refused the image after the door) so the client's Retry-After is kept too."""
        label = b"bulk" if priority is Priority.BULK else b"interactive"

        async def noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-priority", label)]
                message = {**message, "headers": headers}
                if message["status"] == 429:
                    retry_after = dict(headers).get(b"retry-after", b"1")
                    self._retries.refused(client, int(retry_after) if retry_after.isdigit() else 1)
            await send(message)

        return noted


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

"""Admission at the door: a request for the model that the model would refuse (queue full,
or past the latency target) gets its 429 before its body is read. Overload then costs almost
no CPU, refusals come back in milliseconds, and the images already admitted keep the cores.

Admitted requests whose image has not reached the model yet (body still arriving, being
parsed or decoded) are counted: they will queue ahead of the next one, and the model's own
queue does not see them yet. The price of admitting at the door: under overload, an image
the cache could have answered is refused too.

Which requests: a route whose images go to the model says so where it is declared, with
`openapi_extra=... | USES_MODEL` (the OpenAPI document shows it as `x-admission: model`).
Explanations have their own limit and are not marked.
"""

from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from batching import QueueFull
from service.errors import error_response

USES_MODEL: dict[str, Any] = {"x-admission": "model"}


def model_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """The routes marked USES_MODEL."""
    return [
        route
        for route in routes
        if isinstance(route, APIRoute)
        and (route.openapi_extra or {}).get("x-admission") == USES_MODEL["x-admission"]
    ]


class Ticket:
    """One admitted request, counted until its image reaches the model or it ends."""

    def __init__(self, count: "OnTheWay") -> None:
        self._count = count
        self._open = True
        count.waiting += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._count.waiting -= 1


class OnTheWay:
    """Requests admitted at the door whose images have not reached the model yet."""

    def __init__(self) -> None:
        self.waiting = 0


_ticket: ContextVar[Ticket | None] = ContextVar("admission_ticket", default=None)


def reached_model() -> None:
    """The current request's image goes to the model now: the model counts it from here."""
    ticket = _ticket.get()
    if ticket is not None:
        ticket.close()


class Door(Protocol):
    def admit(self) -> Ticket:
        """A ticket for one more request, or QueueFull."""
        ...


class AdmitAtTheDoor:
    def __init__(self, app: ASGIApp, routes: list[APIRoute]) -> None:
        self.app = app
        self._routes = routes  # the model routes (model_routes)

    def _uses_model(self, scope: Scope) -> bool:
        return any(route.matches(scope)[0] is Match.FULL for route in self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door: Door | None = getattr(scope["app"].state, "pipeline", None)  # None: starting
        if scope["type"] != "http" or door is None or not self._uses_model(scope):
            await self.app(scope, receive, send)
            return
        try:
            ticket = door.admit()
        except QueueFull as refused:
            await error_response(refused)(scope, receive, send)
            return
        token = _ticket.set(ticket)
        try:
            await self.app(scope, receive, send)
        finally:
            _ticket.reset(token)
            ticket.close()

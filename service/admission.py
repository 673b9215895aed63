"""Admission's accounting: the requests admitted for a model whose images have not reached it.

A request for the model is admitted once, before its body is read (service.http.admission,
at the door), against the pipeline of the version that will serve it. From then until its
image reaches the model (body still arriving, being parsed or decoded) it holds a Ticket:
it will queue ahead of the next request, and the model's own queue does not see it yet, so
the pipeline counts it (`OnTheWay`) and the model's `admit(ahead=...)` weighs it.
"""

from contextvars import ContextVar
from typing import Protocol

from batching import Priority


class OnTheWay:
    """Requests admitted for one pipeline whose images have not reached its model yet."""

    def __init__(self) -> None:
        self.waiting = 0


class Ticket:
    """One admitted request, counted until its image reaches the model or it ends."""

    def __init__(self, count: OnTheWay) -> None:
        self._count = count
        self._open = True
        count.waiting += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._count.waiting -= 1


class Door(Protocol):
    def admit(self, priority: Priority = Priority.INTERACTIVE) -> Ticket:
        """A ticket for one more request of this class, or QueueFull."""
        ...


current_ticket: ContextVar[Ticket | None] = ContextVar("admission_ticket", default=None)
# The class of the work under way: set at the door from the route (and the request's asking
# for less), and by bulk work of the service's own (a version's re-embedding); the model's
# queue serves interactive images first and sheds bulk ones first.
current_priority: ContextVar[Priority] = ContextVar("work_priority", default=Priority.INTERACTIVE)


def reached_model() -> None:
    """The current request's image goes to the model now: the model counts it from here."""
    ticket = current_ticket.get()
    if ticket is not None:
        ticket.close()

"""Single-flight: identical concurrent requests share one computation."""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(eq=False)
class _Flight(Generic[V]):
    task: "asyncio.Task[V]"
    waiters: int = 0


class SingleFlight(Generic[V]):
    """Runs `work` once per key while it is in flight; later callers await the same result.

    The work runs as its own task, so one caller going away does not fail the others; when
    the last caller goes away the work is cancelled (a disconnected client costs nothing).
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[V]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def run(self, key: str, work: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The result, and whether this call joined a flight another call started."""
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._land, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), joined
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()

    def _land(self, key: str, flight: _Flight[V], _: "asyncio.Task[V]") -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

"""How the backend search shares the machine with the model that serves: in its gaps.

The search runs in a process of its own (service.model.search_process), niced as a whole.
`ServingActivity` is the serving batcher's busy/idle state, shared with that process: an
event set while nothing is queued or running, and a count of the times serving turned
busy. `ServingGaps` is the search's side: before a forward pass it waits (a while) for the
model to be idle; a timed forward that a serving batch overlapped is discarded, because it
measured the two sharing the cores, not the candidate; and a search that could only measure
under load waits for a quiet moment to measure again before its decision is final.
"""

import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Event as SharedEvent

# Each forward pass of the search waits up to this long for the model to be idle first (so a
# saturated model still lets the search creep on).
YIELD_S = 1.0
# Overlapped timings discarded in a row before one is kept (and the search marked as
# measured under load, to be measured again in the quiet).
MAX_DISCARDED = 8
# Serving idle this long is quiet enough to measure a decision made under load again.
QUIET_S = 3.0


class SearchCancelled(BaseException):
    """The service is shutting down: the search stops at its next step. A BaseException,
    like asyncio's CancelledError, so no handler of a candidate's failures swallows it."""


class ServingActivity:
    """The serving batcher's activity, readable from another process. The batcher calls
    busy() and idle() (a BatchActivity) on its event loop's thread: the only writer."""

    def __init__(self, context: BaseContext) -> None:
        idle, busy = context.Event(), context.Event()
        idle.set()
        self._events: tuple[SharedEvent, SharedEvent] | None = (idle, busy)
        self._busy_count = context.Value("Q", 0, lock=False)  # one writer; 8-byte reads

    def busy(self) -> None:
        events = self._events
        if events is None:
            return
        self._busy_count.value += 1  # before the events: a reader never sees idle and old
        events[0].clear()
        events[1].set()

    def idle(self) -> None:
        events = self._events
        if events is not None:
            events[1].clear()
            events[0].set()

    def close(self) -> None:
        """The search has ended: stop telling it. Its semaphores are released with the last
        reference (a process that dies by a signal would leave them to the resource tracker,
        which complains)."""
        self._events = None

    @property
    def _idle(self) -> SharedEvent:
        assert self._events is not None, "closed"
        return self._events[0]

    @property
    def _busy(self) -> SharedEvent:
        assert self._events is not None, "closed"
        return self._events[1]

    def wait_idle(self, timeout_s: float) -> bool:
        return self._idle.wait(timeout_s)

    def wait_busy(self, timeout_s: float) -> bool:
        return self._busy.wait(timeout_s)

    def mark(self) -> int | None:
        """A mark to check later with quiet_since; None while serving is busy."""
        count = int(self._busy_count.value)
        return count if self._idle.is_set() else None

    def quiet_since(self, mark: int | None) -> bool:
        """Serving was idle at `mark` and has not turned busy since."""
        return mark is not None and self._idle.is_set() and self._busy_count.value == mark


class ServingGaps:
    """The search's side of sharing: pauses, timings that count, waiting for the quiet."""

    def __init__(self, activity: ServingActivity, stopping: threading.Event | Callable[[], bool]):
        self._activity = activity
        self._stopping = stopping.is_set if isinstance(stopping, threading.Event) else stopping
        self._discarded_in_a_row = 0
        self.discarded = 0  # timings thrown away because a serving batch overlapped them
        self.under_load = False  # a timing was kept although serving overlapped it

    def check(self) -> None:
        """Raise SearchCancelled once the service is stopping."""
        if self._stopping():
            raise SearchCancelled

    def pause(self) -> None:
        """Before any forward pass of the search: stop if stopping; else wait for the model
        to be idle, for up to YIELD_S."""
        self.check()
        self._activity.wait_idle(YIELD_S)

    def timed(self, forward: Callable[[], object]) -> float | None:
        """Seconds `forward` took, or None when a serving batch overlapped it (discarded).
        After MAX_DISCARDED in a row, the overlapped time is kept and `under_load` set."""
        self.pause()
        mark = self._activity.mark()
        started = time.perf_counter()
        forward()
        seconds = time.perf_counter() - started
        if self._activity.quiet_since(mark):
            self._discarded_in_a_row = 0
            return seconds
        if self._discarded_in_a_row < MAX_DISCARDED:
            self._discarded_in_a_row += 1
            self.discarded += 1
            return None
        self._discarded_in_a_row = 0
        self.under_load = True
        return seconds

    def wait_for_quiet(self, quiet_s: float | None = None) -> None:
        """Block until serving has been idle for `quiet_s` (QUIET_S by default; raises
        SearchCancelled when stopping), then count what is measured from here afresh."""
        quiet_s = QUIET_S if quiet_s is None else quiet_s
        while True:
            self.check()
            if not self._activity.wait_idle(YIELD_S):
                continue
            mark = self._activity.mark()
            if not self._activity.wait_busy(quiet_s) and self._activity.quiet_since(mark):
                self.under_load = False
                return

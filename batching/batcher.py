"""Asyncio dynamic batcher: many awaiting callers, one owner thread running batches.

Callers `await submit(item)`; a collector task on the event loop groups queued items into
batches (closed when full, or when the oldest item has waited `max_wait_s`) and hands each
batch to a single-thread executor that owns the batch function (and so the model). While a
batch runs, the next one keeps filling, up to the maximum size, so a busy worker gets full
batches without any extra wait.
"""

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from batching.batch_limit import BatchLimit
from batching.batcher_types import (
    BatchActivity,
    BatchOutcome,
    BatchTracing,
    CloseReason,
    Priority,
)
from batching.errors import BatcherStopped, BatchFailed, DeadlineExceeded, QueueFull
from batching.metrics import BatchObserver

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: "asyncio.Future[BatchOutcome[R]]"
    enqueued_at: float
    deadline: float | None = field(default=None)
    priority: Priority = Priority.INTERACTIVE
    traced: object = None  # what BatchTracing.capture returned at submit


class Batcher(Generic[T, R]):
    """Groups concurrently submitted items into batches for one batch function.

    Args:
        run_batch: called on the owner thread with a list of items; returns one result per
            item, in order. If it raises, every item of that batch fails with BatchFailed.
        max_batch_size: most items in one call of run_batch.
        max_wait_s: longest a batch waits for more items, counted from its first item. With 0,
            a batch starts as soon as the worker is free (nothing waits while it is idle);
            while it is busy, the next batch fills either way.
        max_queue: most items waiting for a batch; beyond it submit raises QueueFull.
        max_latency_s: refuse (QueueFull) an item predicted to get its result later than
            this, from the measured time per item of recent batches and the items ahead of it;
            and run batches small enough to meet it (batching.batch_limit).
        hung_after_s: a batch running longer than this marks the batcher `hung` (logged,
            reported to the observer) until it ends: the batch function is stuck.
        owner_setup: runs once on the owner thread before its first batch (its scheduling
            priority, say).
        observer: receives metrics; optional.
        activity: told when the batcher turns busy and idle (on the event loop's thread).
        tracing: traces each batch, linked to the items it carried; optional.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_latency_s: float | None = None,
        hung_after_s: float | None = None,
        owner_setup: Callable[[], None] | None = None,
        observer: BatchObserver | None = None,
        activity: BatchActivity | None = None,
        tracing: BatchTracing | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._max_latency_s = max_latency_s
        self._hung_after_s = hung_after_s
        self._owner_setup = owner_setup
        self._observer = observer
        self._activity = activity
        self._tracing = tracing
        self._name = name
        self._pending: deque[_Pending[T, R]] = deque()  # interactive items, then bulk ones
        self._interactive = 0  # how many of the pending items are interactive
        self._limit = BatchLimit(max_batch_size, max_latency_s)
        self._wakeup = asyncio.Event()
        self._accepting = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._owner: ThreadPoolExecutor | None = None
        self._running_batch: list[_Pending[T, R]] = []
        self._running_since = 0.0
        # Seconds per item of recent batches (a moving average): turns the items ahead of a
        # new one into a predicted wait, for admission and Retry-After. 0 until measured.
        self._seconds_per_item = 0.0
        self._hung = False
        # Set while nothing is queued or running: other work on the same cores (a backend
        # search) waits for it, so it runs in the gaps between batches.
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> bool:
        return self._accepting and self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def hung(self) -> bool:
        """A batch has been running for longer than `hung_after_s`."""
        return self._hung

    def wait_idle(self, timeout_s: float) -> bool:
        """From any thread: block until nothing is queued or running, at most `timeout_s`;
        True if it was idle."""
        return self._idle.wait(timeout_s)

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def batch_limit(self) -> int:
        """The largest batch run now (below max_batch_size while the target needs it)."""
        return self._limit.size

    def retarget(self, max_latency_s: float | None) -> None:
        """A new latency target from now on (admission, and the batch limit adapts again)."""
        self._max_latency_s = max_latency_s
        self._limit.retarget(self._max_batch_size, max_latency_s)
        self._report_limit()

    def resize(
        self, *, max_batch_size: int, max_queue: int, seconds_per_item: float | None = None
    ) -> None:
        """New limits from the next batch on (the batch function's replacement runs bigger or
        smaller batches); call on the event loop's thread, like submit. `seconds_per_item`:
        the replacement's measured cost, which admission predicts with from now on (the
        average of the batches before it measured what no longer runs)."""
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._limit.retarget(max_batch_size, self._max_latency_s)
        self._report_limit()
        if seconds_per_item is not None:
            self._seconds_per_item = seconds_per_item
        self._wakeup.set()  # a batch that is full at the new size starts now

    def predicted_latency_s(
        self, ahead: int = 0, priority: Priority = Priority.INTERACTIVE
    ) -> float:
        """When an item submitted now would have its result: the rest of the running batch,
        then the batches of the items queued ahead of it (and `ahead` more, admitted but not
        yet submitted) up to its own, at the measured time per item. Its own batch counts as
        full: under load, later items fill it before it starts. Bulk items queued behind an
        interactive one do not delay it."""
        per_item = self._seconds_per_item
        limit = self._limit.size
        rest = len(self._running_batch) * per_item - (time.monotonic() - self._running_since)
        items = self._queued_before(priority) + ahead + 1
        batches = math.ceil(items / limit)
        return max(0.0, rest) + batches * limit * per_item

    def _queued_before(self, priority: Priority) -> int:
        """Pending items that would run before a new item of this priority."""
        return self._interactive if priority is Priority.INTERACTIVE else len(self._pending)

    def admit(self, ahead: int = 0, priority: Priority = Priority.INTERACTIVE) -> None:
        """Raise QueueFull if an item submitted now would be refused: callers check this
        before they spend work (decoding) on an item the batcher will not take. `ahead`:
        items the caller has admitted and not yet submitted (they will queue first). Bulk
        items are refused at half the queue and half the target, so that under overload bulk
        work sheds first and interactive work still finds room."""
        depth = len(self._pending)
        bulk = priority is Priority.BULK
        queue_bound = max(1, self._max_queue // 2) if bulk else self._max_queue
        if depth >= queue_bound:
            self._reject("bulk_shed" if bulk else "queue_full")
            raise QueueFull(depth, max(1.0, self.predicted_latency_s(0, priority)))
        # Until a full batch waits behind the one running, anything is taken: the model must
        # never run dry for want of admitted work, and only batches that run can correct a
        # time per item measured too high. From there on the target counts: a second batch
        # waiting would only add a batch's time to everyone's wait (with two, a batch of
        # 0.65 s made a 1 s target's accepted p99 1.7 s).
        deep = self._queued_before(priority) + ahead >= self._limit.size
        if self._max_latency_s is not None and deep:
            target = self._max_latency_s / 2 if bulk else self._max_latency_s
            predicted = self.predicted_latency_s(ahead, priority)
            if predicted > target:
                self._reject("bulk_shed" if bulk else "latency_target")
                why = (
                    f"overloaded: a new {'bulk ' if bulk else ''}image would wait "
                    f"{predicted:.1f} s here, over the {target:.1f} s target"
                )
                # The backlog drains at one second per second: the wait until it fits.
                raise QueueFull(depth, predicted - target, why)

    def _reject(self, reason: str) -> None:
        if self._observer:
            self._observer.item_rejected(reason)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self._name} already started")
        self._owner = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self._name}-owner", initializer=self._owner_setup
        )
        self._accepting = True
        self._task = asyncio.create_task(self._collect_and_run(), name=f"{self._name}-collector")

    async def submit(
        self,
        item: T,
        *,
        timeout_s: float | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> BatchOutcome[R]:
        """Queue one item and wait for its result; an interactive item queues ahead of every
        bulk one.

        Raises QueueFull, BatcherStopped, DeadlineExceeded (timeout_s passed) or BatchFailed.
        Cancelling the awaiting task drops the item if its batch has not started.
        """
        if not self._accepting:
            raise BatcherStopped(f"{self._name} is not accepting work")
        self.admit(0, priority)
        now = time.monotonic()
        future: asyncio.Future[BatchOutcome[R]] = asyncio.get_running_loop().create_future()
        deadline = None if timeout_s is None else now + timeout_s
        traced = self._tracing.capture() if self._tracing is not None else None
        pending = _Pending(item, future, now, deadline, priority, traced)
        if priority is Priority.INTERACTIVE:
            self._pending.insert(self._interactive, pending)
            self._interactive += 1
        else:
            self._pending.append(pending)
        self._became_busy()
        self._report_depth()
        self._wakeup.set()
        try:
            # A cancelled or timed-out wait cancels `future`, which the collector then skips.
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            if self._observer:
                self._observer.item_expired()
            raise DeadlineExceeded(f"no result within {timeout_s:.1f} s") from None

    async def stop(self, *, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting work, run what is queued, and fail whatever is left after the timeout."""
        self._accepting = False
        self._closing = True
        self._wakeup.set()
        if self._task is None or self._task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
        except TimeoutError:
            stopped = BatcherStopped(f"{self._name} stopped before this item ran")
            for pending in [*self._pending, *self._running_batch]:
                if not pending.future.done():
                    pending.future.set_exception(stopped)
            self._pending.clear()
            self._interactive = 0
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            if self._owner is not None:
                # A batch still running after the timeout cannot be interrupted; don't wait.
                self._owner.shutdown(wait=False, cancel_futures=True)

    def _report_limit(self) -> None:
        if self._observer:
            self._observer.batch_limit(self._limit.size)

    def _report_depth(self) -> None:
        if self._observer:
            self._observer.queue_depth(len(self._pending))

    async def _collect_and_run(self) -> None:
        running: asyncio.Task[None] | None = None
        while True:
            reason = await self._wait_for_batch(running)
            if reason is None:
                break
            size = min(self._limit.size, len(self._pending))
            batch = [self._pending.popleft() for _ in range(size)]
            self._interactive -= sum(p.priority is Priority.INTERACTIVE for p in batch)
            self._report_depth()
            running = asyncio.create_task(self._run(batch, reason))
        if running is not None:
            await running

    async def _wait_for_batch(self, running: "asyncio.Task[None] | None") -> CloseReason | None:
        """Wait until a batch should start; None once stopping with nothing left to run."""
        while True:
            self._wakeup.clear()
            self._discard_dead()
            if not self._pending:
                if self._closing:
                    return None
                await self._sleep(None, None)
                continue
            full = len(self._pending) >= self._limit.size
            close_at = self._pending[0].enqueued_at + self._max_wait_s
            remaining = close_at - time.monotonic()
            if not (full or remaining <= 0 or self._closing):
                await self._sleep(remaining, None)
                continue
            if running is not None and not running.done():
                # Worker busy: let the batch keep filling until the worker is free.
                await self._sleep(None, running)
                continue
            if full:
                return CloseReason.FULL
            if self._closing:
                return CloseReason.DRAIN
            return CloseReason.TIMEOUT if self._max_wait_s > 0 else CloseReason.IDLE

    async def _sleep(self, timeout_s: float | None, running: "asyncio.Task[None] | None") -> None:
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._wakeup.wait())
        waits: set[asyncio.Future[Any]] = {waiter} if running is None else {waiter, running}
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def _discard_dead(self) -> None:
        """Drop items whose caller gave up or whose deadline passed; they never reach a batch."""
        if not self._pending:
            return
        now = time.monotonic()
        live: deque[_Pending[T, R]] = deque()
        for pending in self._pending:
            if pending.future.done():
                continue
            if pending.deadline is not None and pending.deadline <= now:
                pending.future.set_exception(DeadlineExceeded("deadline passed while queued"))
                continue
            live.append(pending)
        if len(live) != len(self._pending):
            self._pending = live
            self._interactive = sum(p.priority is Priority.INTERACTIVE for p in live)
            self._report_depth()
            if not live and not self._running_batch:
                self._became_idle()

    async def _run(self, batch: list[_Pending[T, R]], reason: CloseReason) -> None:
        assert self._owner is not None
        self._running_batch = batch
        started = self._running_since = time.monotonic()
        watchdog = None
        if self._hung_after_s is not None:
            watchdog = asyncio.get_running_loop().call_later(
                self._hung_after_s, self._mark_hung, len(batch)
            )
        if self._observer:
            for pending in batch:
                self._observer.item_started(started - pending.enqueued_at)
        traced = (
            self._tracing.batch([pending.traced for pending in batch])
            if self._tracing is not None
            else contextlib.nullcontext()
        )
        try:
            with traced:
                results = await asyncio.get_running_loop().run_in_executor(
                    self._owner, self._run_batch, [pending.item for pending in batch]
                )
            if len(results) != len(batch):
                raise BatchFailed(f"{len(results)} results for a batch of {len(batch)} items")
        except Exception as exc:  # any batch error fails its own items only; the loop goes on
            run_s = time.monotonic() - started
            failure = exc if isinstance(exc, BatchFailed) else BatchFailed(f"batch failed: {exc!r}")
            if failure is not exc:
                failure.__cause__ = exc
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            if self._observer:
                self._observer.batch_ran(len(batch), reason, run_s, ok=False)
            return
        finally:
            self._running_batch = []
            if not self._pending:
                self._became_idle()
            if watchdog is not None:
                watchdog.cancel()
            if self._hung:
                self._set_hung(False)
                ended_after = time.monotonic() - started
                log.warning("%s: the hung batch ended after %.1f s", self._name, ended_after)
        run_s = time.monotonic() - started
        measured = run_s / len(batch)
        previous = self._seconds_per_item
        self._seconds_per_item = measured if not previous else 0.7 * previous + 0.3 * measured
        limit = self._limit.size
        self._limit.ran(len(batch), run_s)
        if self._limit.size != limit:
            log.info(
                "%s: batches of at most %d (of %d) to meet the %.2f s target",
                self._name,
                self._limit.size,
                self._max_batch_size,
                self._max_latency_s,
            )
            self._report_limit()
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                queued_s = started - pending.enqueued_at
                pending.future.set_result(BatchOutcome(result, queued_s, run_s, len(batch)))
        if self._observer:
            self._observer.batch_ran(len(batch), reason, run_s, ok=True)

    def _became_busy(self) -> None:
        if self._idle.is_set():
            self._idle.clear()
            if self._activity is not None:
                self._activity.busy()

    def _became_idle(self) -> None:
        if not self._idle.is_set():
            self._idle.set()
            if self._activity is not None:
                self._activity.idle()

    def _mark_hung(self, size: int) -> None:
        log.error(
            "%s: a batch of %d has run for over %.1f s: the model looks hung (not ready)",
            self._name,
            size,
            self._hung_after_s,
        )
        self._set_hung(True)

    def _set_hung(self, hung: bool) -> None:
        self._hung = hung
        if self._observer:
            self._observer.hung(hung)

"""Run one-off torch work in a thread that ends when the work does.

libgomp (torch's OpenMP on Linux) keeps a team of worker threads for every thread that has
run a parallel region, for as long as that thread lives. Once more OpenMP threads are alive
than there are cores, it stops spin-waiting between parallel regions in every team, and each
of the hundreds of regions in a forward pays a futex sleep and wake-up: on 2 cores a ResNet50
batch-1 forward took 45 ms instead of 34 ms. So the batcher's owner thread keeps the only
long-lived team, and loading, warm-up and explanations run in threads that exit (freeing
their team) as soon as they are done.
"""

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def in_passing_thread(work: Callable[[], T], name: str) -> T:
    """`work()` in a new thread; its result or exception. Cancelling stops the wait only."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if outcome.done():  # the caller was cancelled: nobody waits for this any more
            return
        if error is None:
            outcome.set_result(result)  # type: ignore[arg-type]
        else:
            outcome.set_exception(error)

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task, raised there
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown): nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await outcome

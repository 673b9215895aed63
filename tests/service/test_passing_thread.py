"""One-off torch work runs in a thread that is gone afterwards (its OpenMP team with it)."""

import asyncio
import threading

import pytest

from service.model.passing_thread import in_passing_thread


async def test_returns_the_result_from_a_thread_that_has_ended() -> None:
    ran_in: list[threading.Thread] = []

    def work() -> int:
        ran_in.append(threading.current_thread())
        return 42

    assert await in_passing_thread(work, "test-work") == 42
    (thread,) = ran_in
    assert thread is not threading.main_thread()
    assert thread.name == "test-work"
    thread.join(timeout=5)
    assert not thread.is_alive()  # a pool thread would live on, and keep its team


async def test_raises_the_works_exception_in_the_caller() -> None:
    def work() -> None:
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        await in_passing_thread(work, "test-failing")


async def test_a_cancelled_caller_leaves_the_loop_working() -> None:
    release = threading.Event()
    waiter = asyncio.create_task(in_passing_thread(lambda: release.wait(5), "test-slow"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()  # the thread finishes later and settles nothing: no error on the loop
    assert await in_passing_thread(lambda: "next", "test-next") == "next"

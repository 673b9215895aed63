"""One query's long scan done in two halves at once: one in the calling thread, one in a helper.

FAISS's scans and the copy out of the rows file run without the GIL, so on two cores a long
scan (a deep re-rank, a filter's thousands of matches, every inverted list for a broad
filter) takes about half the time. There is one helper thread a process: under load the
cores are busy with other queries anyway, and the halves then simply queue behind them. The
helper never splits its own work, so it cannot wait on itself.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Part = TypeVar("Part")
Result = TypeVar("Result")

_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def in_two_halves(
    work: Callable[[Part], Result], first: Part, second: Part
) -> tuple[Result, Result]:
    """work(first) in the helper while work(second) runs here; both results, in that order."""
    pending = _helper_pool().submit(work, first)
    done_here = work(second)
    return pending.result(), done_here


def _helper_pool() -> ThreadPoolExecutor:
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(1, thread_name_prefix="index-halves")
        return _helper

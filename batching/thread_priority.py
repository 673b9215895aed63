"""The model's CPU threads yield to the threads that answer requests.

On a CPU device, a forward pass's OpenMP threads keep every core busy under load. At equal
priority, an answer that needs no model (a 429 refusal, a cache hit, /readyz) waits behind
them for a scheduler time slice, which on 2 cores is milliseconds. With the model's threads
a few steps nicer, the kernel runs the event loop (and the decode threads) as soon as they
wake; they take little CPU, so the model loses little.
"""

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_threads_priority(by: int) -> None:
    """Make the calling thread `by` steps nicer. Threads it starts later inherit that: called
    on the batcher's owner thread before its first forward, it covers its OpenMP team too."""
    if by <= 0 or sys.platform != "linux":  # elsewhere setpriority would renice the process
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + by)
    except OSError as exc:  # a sandbox that forbids it: serve at equal priority
        log.warning("could not lower the model threads' priority: %s", exc)

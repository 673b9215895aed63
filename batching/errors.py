"""Why a submitted item got no result."""

import math


class BatcherError(Exception):
    """Base of every error the batcher gives a caller instead of a result."""


class QueueFull(BatcherError):
    """No room: the queue is full, or an item would finish past the latency target. The
    caller should retry after `retry_after_s`."""

    def __init__(self, depth: int, retry_after_s: float, why: str | None = None) -> None:
        why = why or f"queue is full ({depth} waiting)"
        super().__init__(f"{why}; retry in {max(1, math.ceil(retry_after_s))} s")
        self.depth = depth
        self.retry_after_s = retry_after_s
        self.why = why

    def __reduce__(self) -> tuple[type["QueueFull"], tuple[int, float, str]]:
        # Crosses process boundaries (model worker -> HTTP worker) as a pickle.
        return QueueFull, (self.depth, self.retry_after_s, self.why)


class DeadlineExceeded(BatcherError):
    """The item's deadline passed before its result was ready."""


class BatcherStopped(BatcherError):
    """The batcher is not running (not started yet, or shutting down)."""


class BatchFailed(BatcherError):
    """The batch function raised, or returned the wrong number of results."""

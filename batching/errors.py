"""Why a submitted item got no result."""


class BatcherError(Exception):
    """Base of every error the batcher gives a caller instead of a result."""


class QueueFull(BatcherError):
    """The bounded queue is full; the caller should retry after `retry_after_s`."""

    def __init__(self, depth: int, retry_after_s: float) -> None:
        super().__init__(f"queue is full ({depth} waiting); retry in {retry_after_s:.0f} s")
        self.depth = depth
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type["QueueFull"], tuple[int, float]]:
        # Crosses process boundaries (model worker -> HTTP worker) as a pickle.
        return QueueFull, (self.depth, self.retry_after_s)


class DeadlineExceeded(BatcherError):
    """The item's deadline passed before its result was ready."""


class BatcherStopped(BatcherError):
    """The batcher is not running (not started yet, or shutting down)."""


class BatchFailed(BatcherError):
    """The batch function raised, or returned the wrong number of results."""

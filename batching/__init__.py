"""Generic asyncio dynamic batcher (no torch, no FastAPI)."""

from batching.batcher import Batcher
from batching.batcher_types import (
    BatchActivity,
    BatchOutcome,
    BatchTracing,
    CloseReason,
    Priority,
)
from batching.errors import BatcherError, BatcherStopped, BatchFailed, DeadlineExceeded, QueueFull
from batching.metrics import BatchObserver, PrometheusBatchObserver

__all__ = [
    "BatchActivity",
    "BatchFailed",
    "BatchObserver",
    "BatchOutcome",
    "BatchTracing",
    "Batcher",
    "BatcherError",
    "BatcherStopped",
    "CloseReason",
    "DeadlineExceeded",
    "Priority",
    "PrometheusBatchObserver",
    "QueueFull",
]

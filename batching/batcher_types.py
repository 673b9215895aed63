"""Small value types shared by the batcher and its observers."""

from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Generic, Protocol, TypeVar

R = TypeVar("R")


class CloseReason(StrEnum):
    FULL = "full"  # max batch size reached
    TIMEOUT = "timeout"  # max wait since the first item passed
    IDLE = "idle"  # no max wait: the worker was free, so the batch started at once
    DRAIN = "drain"  # shutting down: run what is left without waiting


class Priority(IntEnum):
    """Interactive items run before bulk ones queued earlier, and bulk items are refused
    first (at half the queue, or half the latency target)."""

    INTERACTIVE = 0
    BULK = 1


@dataclass(frozen=True)
class BatchOutcome(Generic[R]):
    """One item's result with how it got there."""

    value: R
    queued_s: float
    run_s: float
    batch_size: int


class BatchTracing(Protocol):
    """Traces batches: `capture` runs when an item is submitted (in its caller's context)
    and what it returns goes to `batch`, whose context manager spans the batch's run."""

    def capture(self) -> object: ...

    def batch(self, captured: list[object]) -> AbstractContextManager[None]: ...


class BatchActivity(Protocol):
    """Told when the batcher turns busy (an item queued while idle) and idle again (nothing
    queued or running): another process sharing the cores can run in the gaps."""

    def busy(self) -> None: ...

    def idle(self) -> None: ...

"""Small value types shared by the batcher and its observers."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

R = TypeVar("R")


class CloseReason(StrEnum):
    FULL = "full"  # max batch size reached
    TIMEOUT = "timeout"  # max wait since the first item passed
    IDLE = "idle"  # no max wait: the worker was free, so the batch started at once
    DRAIN = "drain"  # shutting down: run what is left without waiting


@dataclass(frozen=True)
class BatchOutcome(Generic[R]):
    """One item's result with how it got there."""

    value: R
    queued_s: float
    run_s: float
    batch_size: int

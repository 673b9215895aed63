"""What the batcher reports about itself, and a Prometheus implementation of it."""

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batching.batcher_types import CloseReason
from batching.metric_families import family

# Batch sizes up to a GPU's largest; one set for every host, so versions share the metric.
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_REJECTED_REASONS = ("queue_full", "latency_target", "bulk_shed")


class BatchObserver(Protocol):
    def batch_ran(self, size: int, reason: CloseReason, run_s: float, ok: bool) -> None: ...
    def item_started(self, queued_s: float) -> None: ...
    def item_rejected(self, reason: str) -> None: ...
    def item_expired(self) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def hung(self, is_hung: bool) -> None: ...
    def batch_limit(self, size: int) -> None: ...


class PrometheusBatchObserver:
    """Batch sizes, close reasons, queue depth and wait, run time, on a caller's registry,
    labelled with the model version whose batcher this is (every version's host in a
    process reports on the same metrics)."""

    def __init__(self, registry: CollectorRegistry, max_batch_size: int, version: str) -> None:
        self._version = version
        self._size = family(
            registry,
            Histogram,
            "batcher_batch_size",
            "Items per batch run",
            ["version"],
            buckets=_SIZE_BUCKETS,
        ).labels(version)
        self._closed = family(
            registry,
            Counter,
            "batcher_batches",
            "Batches run, by why they closed and outcome",
            ["version", "reason", "outcome"],
        )
        self._run = family(
            registry,
            Histogram,
            "batcher_run_seconds",
            "Time the batch function took",
            ["version"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels(version)
        self._wait = family(
            registry,
            Histogram,
            "batcher_queue_wait_seconds",
            "Time from submit to batch start",
            ["version"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ).labels(version)
        # In multi-process mode a dead worker's value goes with it (live*), never stays behind.
        self._depth = family(
            registry,
            Gauge,
            "batcher_queue_depth",
            "Items waiting for a batch",
            ["version"],
            multiprocess_mode="livesum",
        ).labels(version)
        self._rejected = family(
            registry,
            Counter,
            "batcher_rejected",
            "Items refused: queue_full, latency_target (would finish too late), or bulk_shed "
            "(bulk work refused first, while interactive work is still taken)",
            ["version", "reason"],
        )
        for reason in _REJECTED_REASONS:
            self._rejected.labels(version, reason)  # 0 from the start: dashboards see each
        self._hung = family(
            registry,
            Gauge,
            "batcher_hung",
            "1 while a batch has run past the watchdog bound",
            ["version"],
            multiprocess_mode="livemax",
        ).labels(version)
        self._hangs = family(
            registry,
            Counter,
            "batcher_hangs",
            "Batches that ran past the watchdog bound",
            ["version"],
        ).labels(version)
        self._expired = family(
            registry,
            Counter,
            "batcher_expired",
            "Items dropped because their deadline passed",
            ["version"],
        ).labels(version)
        self._limit = family(
            registry,
            Gauge,
            "batcher_batch_size_limit",
            "The largest batch run now: below the configured maximum while a latency target "
            "below two batch times needs smaller batches",
            ["version"],
            multiprocess_mode="livemin",
        ).labels(version)
        self._limit.set(max_batch_size)

    def batch_ran(self, size: int, reason: CloseReason, run_s: float, ok: bool) -> None:
        self._size.observe(size)
        self._closed.labels(self._version, reason.value, "ok" if ok else "error").inc()
        self._run.observe(run_s)

    def item_started(self, queued_s: float) -> None:
        self._wait.observe(queued_s)

    def item_rejected(self, reason: str) -> None:
        self._rejected.labels(self._version, reason).inc()

    def item_expired(self) -> None:
        self._expired.inc()

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def hung(self, is_hung: bool) -> None:
        self._hung.set(int(is_hung))
        if is_hung:
            self._hangs.inc()

    def batch_limit(self, size: int) -> None:
        self._limit.set(size)

"""What the batcher reports about itself, and a Prometheus implementation of it."""

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batching.batcher_types import CloseReason


class BatchObserver(Protocol):
    def batch_ran(self, size: int, reason: CloseReason, run_s: float, ok: bool) -> None: ...
    def item_started(self, queued_s: float) -> None: ...
    def item_rejected(self, reason: str) -> None: ...
    def item_expired(self) -> None: ...
    def queue_depth(self, depth: int) -> None: ...
    def hung(self, is_hung: bool) -> None: ...
    def batch_limit(self, size: int) -> None: ...


class PrometheusBatchObserver:
    """Batch sizes, close reasons, queue depth and wait, run time; on a caller's registry."""

    def __init__(self, registry: CollectorRegistry, max_batch_size: int) -> None:
        size_buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self._size = Histogram(
            "batcher_batch_size",
            "Items per batch run",
            buckets=[b for b in size_buckets if b <= max_batch_size],
            registry=registry,
        )
        self._closed = Counter(
            "batcher_batches",
            "Batches run, by why they closed and outcome",
            ["reason", "outcome"],
            registry=registry,
        )
        self._run = Histogram(
            "batcher_run_seconds",
            "Time the batch function took",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self._wait = Histogram(
            "batcher_queue_wait_seconds",
            "Time from submit to batch start",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        # In multi-process mode a dead worker's value goes with it (live*), never stays behind.
        self._depth = Gauge(
            "batcher_queue_depth",
            "Items waiting for a batch",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._rejected = Counter(
            "batcher_rejected",
            "Items refused: queue_full, latency_target (would finish too late), or bulk_shed "
            "(bulk work refused first, while interactive work is still taken)",
            ["reason"],
            registry=registry,
        )
        for reason in ("queue_full", "latency_target", "bulk_shed"):
            self._rejected.labels(reason=reason)  # 0 from the start: dashboards see every one
        self._hung = Gauge(
            "batcher_hung",
            "1 while a batch has run past the watchdog bound",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._hangs = Counter(
            "batcher_hangs", "Batches that ran past the watchdog bound", registry=registry
        )
        self._expired = Counter(
            "batcher_expired", "Items dropped because their deadline passed", registry=registry
        )
        self._limit = Gauge(
            "batcher_batch_size_limit",
            "The largest batch run now: below the configured maximum while a latency target "
            "below two batch times needs smaller batches",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._limit.set(max_batch_size)

    def batch_ran(self, size: int, reason: CloseReason, run_s: float, ok: bool) -> None:
        self._size.observe(size)
        self._closed.labels(reason=reason.value, outcome="ok" if ok else "error").inc()
        self._run.observe(run_s)

    def item_started(self, queued_s: float) -> None:
        self._wait.observe(queued_s)

    def item_rejected(self, reason: str) -> None:
        self._rejected.labels(reason=reason).inc()

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

"""The seam between the inspection routes and the explainer, with its own admission limit.

Explanations need gradients or intermediate outputs, so they run on the fp32 torch replicas
of `Explainer`, on their own threads, never in the serving batcher: at most `concurrency` run
and `queue` wait; beyond that a request is refused at once (429, Retry-After), so a burst of
explanations never stalls classify traffic. In the worker topology the explainer lives in the
model worker and HTTP workers reach it through `service.transport.remote_inspector`.
"""

import asyncio
import math
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from batching import QueueFull
from batching.metric_families import family
from service.errors import ServiceError, Unavailable
from service.explain.explainer import Explainer
from service.explain.inspection import CamResult, FeatureMaps, ModelCard
from service.model.device_memory import is_out_of_memory, release_cached_memory
from service.model.passing_thread import in_passing_thread

T = TypeVar("T")


class InspectorMetrics:
    """A model version's inspections (every version's inspector in a process reports on
    the same metrics, by its `version` label)."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self._version = version
        self._requests = family(
            registry,
            Counter,
            "explain_requests",
            "Inspection requests by kind and outcome",
            ["version", "kind", "outcome"],
        )
        self._seconds = family(
            registry,
            Histogram,
            "explain_seconds",
            "Time an inspection took to compute",
            ["version", "kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.in_flight = family(
            registry,
            Gauge,
            "explain_in_flight",
            "Inspections running or waiting",
            ["version"],
            multiprocess_mode="livesum",
        ).labels(version)

    def requests(self, kind: str, outcome: str) -> None:
        self._requests.labels(self._version, kind, outcome).inc()

    def seconds(self, kind: str, elapsed: float) -> None:
        self._seconds.labels(self._version, kind).observe(elapsed)


class InProcessInspector:
    """The explainer in this process, behind an admission limit."""

    def __init__(
        self,
        explainer: Explainer,
        *,
        serving: Callable[[], tuple[str, str, str]],
        concurrency: int,
        queue: int,
        registry: CollectorRegistry,
        version: str,
    ) -> None:
        self._explainer = explainer
        self._serving = serving  # backend, precision, device: what serves now
        self._concurrency = concurrency
        self._limit = concurrency + queue
        self._admitted = 0
        self._seconds_each = 1.0  # running estimate, for Retry-After
        # Each explanation in its own passing thread (see passing_thread): a pool of idle
        # explain threads would slow every forward of the serving model on the CPU.
        self._running = asyncio.Semaphore(concurrency)
        self._metrics = InspectorMetrics(registry, version)
        self._card: tuple[tuple[str, str, str], ModelCard] | None = None

    async def cam(
        self, pixels: np.ndarray, class_id: int | None, method: str, layer: str | None
    ) -> CamResult:
        explainer = self._explainer
        return await self._run(
            "cam", lambda: explainer.cam(pixels, class_id, method, explainer.layer(layer))
        )

    async def features(self, pixels: np.ndarray, stage: int) -> FeatureMaps:
        explainer = self._explainer
        return await self._run(
            "features", lambda: explainer.features(pixels, explainer.stage(stage))
        )

    async def kernels(self) -> np.ndarray:
        return await self._run("kernels", self._explainer.kernels)

    async def card(self) -> ModelCard:
        serving = self._serving()
        if self._card is None or self._card[0] != serving:  # measured once per backend
            card = await self._run("card", lambda: self._explainer.card(*serving))
            self._card = (serving, card)
        return self._card[1]

    async def _run(self, kind: str, work: Callable[[], T]) -> T:
        if self._admitted >= self._limit:
            self._metrics.requests(kind, "rejected")
            waiting_rounds = math.ceil((self._admitted + 1) / self._concurrency)
            raise QueueFull(self._admitted, max(1.0, waiting_rounds * self._seconds_each))
        self._admitted += 1
        self._metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            async with self._running:
                result = await in_passing_thread(work, f"explain-{kind}")
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            release_cached_memory()
            self._metrics.requests(kind, "out_of_memory")
            raise Unavailable(
                "the device ran out of memory for this explanation; try again later"
            ) from exc
        except ServiceError:
            self._metrics.requests(kind, "invalid")
            raise
        finally:
            self._admitted -= 1
            self._metrics.in_flight.dec()
        elapsed = time.perf_counter() - started
        self._seconds_each = 0.8 * self._seconds_each + 0.2 * elapsed
        self._metrics.seconds(kind, elapsed)
        self._metrics.requests(kind, "ok")
        return result

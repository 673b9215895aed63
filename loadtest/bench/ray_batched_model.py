"""For loadtest.bench.bench_ray batching only: a Model deployment that batches with Ray Serve's
@serve.batch instead of the service's batcher (no adaptive admission, deadlines or watchdog),
to measure what the choice of batcher costs or gains on the same model."""

import asyncio
import time
from typing import Any

from prometheus_client import CollectorRegistry
from ray import serve

from batching import BatchOutcome
from service.cluster.deployments import replica_settings
from service.hosting.host import ModelHost
from service.model.model_io import ModelInput, ModelResult
from service.versions.registry import DEFAULT


@serve.deployment(name="Model", max_ongoing_requests=256)
class RayBatchedModel:
    async def __init__(self) -> None:  # type: ignore[misc]
        settings = replica_settings()
        self._host = ModelHost(settings, CollectorRegistry(), DEFAULT)
        await self._host.load()  # its own batcher is never started: @serve.batch batches
        batched: Any = self._infer  # @serve.batch's setters are not in its type
        batched.set_max_batch_size(self._host.runtime.batch_size)
        batched.set_batch_wait_timeout_s(settings.max_wait_ms / 1000)

    async def call(self, name: str, *args: Any) -> Any:
        if name == "describe":
            return self._host.status(0, hung=False)
        item, _timeout_s, _key = args
        return await self._infer(item), False

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _infer(self, items: list[ModelInput]) -> list[BatchOutcome[ModelResult]]:
        started = time.perf_counter()
        results = await asyncio.to_thread(self._host.runtime.predict_batch, items)
        run_s = time.perf_counter() - started
        return [BatchOutcome(r, 0.0, run_s, len(items)) for r in results]

"""The one place decode, batcher and model meet (the cache joins here later)."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from batching import Batcher, PrometheusBatchObserver
from service.model.runtime import ModelRuntime, Prediction
from service.settings import Settings


@dataclass(frozen=True)
class Inference:
    probabilities: np.ndarray
    embedding: np.ndarray
    timings_ms: dict[str, float]
    batch_size: int


class Pipeline:
    """Bytes in, one forward pass's outputs out, within the request deadline."""

    def __init__(self, runtime: ModelRuntime, settings: Settings, registry: CollectorRegistry):
        self.runtime = runtime
        self.settings = settings
        self._timeout_s = settings.request_timeout_s
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher[np.ndarray, Prediction] = Batcher(
            runtime.predict_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.queue_size,
            observer=PrometheusBatchObserver(registry, settings.max_batch_size),
            name="model",
        )

    @property
    def ready(self) -> bool:
        return self.batcher.running

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop(drain_timeout_s=self._timeout_s)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, data: bytes) -> Inference:
        """Decode off the event loop, then queue for the model; raises service/batching errors."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self._decode_pool, self.runtime.preprocessor, data)
        decoded = time.perf_counter()
        remaining = self._timeout_s - (decoded - started)
        outcome = await self.batcher.submit(image, timeout_s=max(remaining, 0.001))
        finished = time.perf_counter()
        return Inference(
            probabilities=outcome.value.probabilities,
            embedding=outcome.value.embedding,
            timings_ms={
                "decode": round(1000 * (decoded - started), 2),
                "queue": round(1000 * outcome.queued_s, 2),
                "inference": round(1000 * outcome.run_s, 2),
                "total": round(1000 * (finished - started), 2),
            },
            batch_size=outcome.batch_size,
        )

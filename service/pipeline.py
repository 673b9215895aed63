"""The one place cache, decode, batcher and model meet."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from prometheus_client import CollectorRegistry

from batching import Batcher, PrometheusBatchObserver
from service.cache import (
    CacheMetrics,
    MemoryCache,
    RedisCache,
    ResultCache,
    cache_key,
    decode_record,
    encode_record,
)
from service.model.runtime import ModelRuntime, Prediction
from service.settings import Settings
from service.single_flight import SingleFlight


@dataclass(frozen=True)
class Inference:
    probabilities: np.ndarray
    embedding: np.ndarray
    timings_ms: dict[str, float]
    batch_size: int  # 0 when the result came from the cache
    cache: Literal["hit", "miss"] = "miss"  # hit: the model did not run for this request


# Hashing a large upload takes milliseconds; keep that off the event loop.
_HASH_INLINE_BYTES = 1 << 20


def make_cache(settings: Settings, metrics: CacheMetrics) -> ResultCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.cache_timeout_ms / 1000,
            metrics=metrics,
        )
    return MemoryCache(settings.cache_memory_bytes, settings.cache_ttl_s, metrics)


class Pipeline:
    """Bytes in, one forward pass's outputs out, within the request deadline.

    Order: cache lookup, then single-flight (identical requests in flight share one run),
    then decode in a thread pool and the batcher; the result is cached in the background.
    """

    def __init__(self, runtime: ModelRuntime, settings: Settings, registry: CollectorRegistry):
        self.runtime = runtime
        self._timeout_s = settings.request_timeout_s
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher[np.ndarray, Prediction] = Batcher(
            runtime.predict_batch,
            max_batch_size=runtime.batch_size,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.queue_size,
            observer=PrometheusBatchObserver(registry, runtime.batch_size),
            name="model",
        )
        self._cache_metrics = CacheMetrics(registry)
        self.cache = make_cache(settings, self._cache_metrics)
        spec = runtime.spec
        self._namespace = f"{spec.fingerprint}-{runtime.backend.name}"
        self._shape = (spec.num_classes, spec.embedding_dim)
        self._flights: SingleFlight[Inference] = SingleFlight()
        self._cache_writes: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        return self.batcher.running

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop(drain_timeout_s=self._timeout_s)
        if self._cache_writes:
            await asyncio.wait(self._cache_writes, timeout=5)
        await self.cache.close()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, data: bytes) -> Inference:
        """The model's outputs for an image, from the cache when it has them.

        Raises service errors (bad image) and batching errors (overload, deadline).
        """
        started = time.perf_counter()
        key = await self._key(data)
        record = await self.cache.get(key)
        cached = decode_record(record, *self._shape) if record is not None else None
        if cached is not None:
            self._cache_metrics.hits.inc()
            elapsed_ms = round(1000 * (time.perf_counter() - started), 2)
            return Inference(
                cached.probabilities,
                cached.embedding,
                {"cache": elapsed_ms, "total": elapsed_ms},
                batch_size=0,
                cache="hit",
            )
        inference, joined = await self._flights.run(key, lambda: self._compute(data, key, started))
        if joined:
            self._cache_metrics.joins.inc()
            return replace(inference, cache="hit")
        self._cache_metrics.misses.inc()
        return inference

    async def _key(self, data: bytes) -> str:
        if len(data) <= _HASH_INLINE_BYTES:
            return cache_key(self._namespace, data)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, cache_key, self._namespace, data)

    async def _compute(self, data: bytes, key: str, started: float) -> Inference:
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self._decode_pool, self.runtime.preprocessor, data)
        decoded = time.perf_counter()
        remaining = self._timeout_s - (decoded - started)
        outcome = await self.batcher.submit(image, timeout_s=max(remaining, 0.001))
        finished = time.perf_counter()
        prediction = outcome.value
        write = asyncio.create_task(
            self.cache.set(key, encode_record(prediction.probabilities, prediction.embedding))
        )
        self._cache_writes.add(write)  # a reference, so the task is not collected mid-write
        write.add_done_callback(self._cache_writes.discard)
        return Inference(
            probabilities=prediction.probabilities,
            embedding=prediction.embedding,
            timings_ms={
                "decode": round(1000 * (decoded - started), 2),
                "queue": round(1000 * outcome.queued_s, 2),
                "inference": round(1000 * outcome.run_s, 2),
                "total": round(1000 * (finished - started), 2),
            },
            batch_size=outcome.batch_size,
        )

"""The one place cache, decode, batcher and model meet."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry

from batching import Priority
from service import resources, tracing
from service.admission import OnTheWay, Ticket, current_priority, reached_model
from service.cache import (
    CacheMetrics,
    MemoryCache,
    RedisCache,
    ResultCache,
    cache_key,
    decode_record,
    encode_record,
)
from service.hosting.client import ModelClient, ModelStatus
from service.images import Preprocessor, decode_image
from service.model.jpeg_upload import inspect_jpeg
from service.model.model_io import ModelInput, ModelOutputs
from service.settings import Settings
from service.single_flight import SingleFlight


@dataclass(frozen=True)
class Inference:
    """One request's result: the model's outputs for its image and how they were obtained."""

    outputs: ModelOutputs
    timings_ms: dict[str, float]
    batch_size: int  # 0 when the result came from the cache
    cache: Literal["hit", "miss"] = "miss"  # hit: the model did not run for this request


@dataclass(frozen=True)
class _ModelView:
    """What the pipeline derives from the serving model; rebuilt if a restart changes it."""

    # fingerprint, backend, and whether JPEGs go to the device (its decoder may switch off)
    identity: tuple[str, str, bool]
    namespace: str  # of cache keys
    shape: tuple[int, int]  # classes, embedding size
    preprocessor: Preprocessor
    jpeg_on_device: bool

    def prepare(self, data: bytes) -> ModelInput:
        """What the model gets for an upload: the JPEG itself when its device decodes it,
        else pixels decoded here. Runs in the decode pool."""
        if self.jpeg_on_device:
            upload = inspect_jpeg(data, max_pixels=self.preprocessor.max_pixels)
            if upload is not None:
                return upload
        return self.preprocessor(data)


# Hashing a large upload takes milliseconds; keep that off the event loop.
_HASH_INLINE_BYTES = 1 << 20
# Prefixed to pixels a client sent, so their cache key is never an encoded image's.
_PIXELS_KEY = b"pixels:"


def make_cache(settings: Settings, metrics: CacheMetrics) -> ResultCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.cache_timeout_ms / 1000,
            metrics=metrics,
        )
    limit = resources.detect().memory_limit_bytes
    budget = resources.cache_budget(settings.cache_memory_bytes, limit)
    return MemoryCache(budget, settings.cache_ttl_s, metrics)


class Pipeline:
    """Bytes in, one forward pass's outputs out, within the request deadline.

    Order: cache lookup, then single-flight (identical requests in flight share one run; with
    workers, the model worker also joins those from different workers), then decode in a
    thread pool and the batcher; the result is cached in the background.
    """

    def __init__(self, model: ModelClient, settings: Settings, registry: CollectorRegistry):
        self.model = model
        self._timeout_s = settings.request_timeout_s
        self._max_pixels = settings.max_image_pixels
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._cache_metrics = CacheMetrics(registry)
        self.cache = make_cache(settings, self._cache_metrics)
        self._view: _ModelView | None = None
        self._flights: SingleFlight[Inference] = SingleFlight()
        self._cache_writes: set[asyncio.Task[None]] = set()
        self._on_the_way = OnTheWay()

    @property
    def ready(self) -> bool:
        return self.model.ready

    def status(self) -> ModelStatus:
        """The serving model; raises NotReady when there is none (routes answer 503)."""
        return self.model.status()

    def admit(self, priority: Priority = Priority.INTERACTIVE) -> Ticket:
        """A ticket for one more request for the model, or QueueFull if the model would
        refuse its image (answered 429 at once)."""
        self.model.admit(self._on_the_way.waiting, priority)
        return Ticket(self._on_the_way)

    async def checked_status(self) -> ModelStatus:
        """The status, after asking the model whether it can serve now (for /readyz)."""
        await self.model.check()
        return self.model.status()

    def _model_view(self) -> _ModelView:
        status = self.model.status()
        spec = status.spec
        identity = (spec.fingerprint, status.backend, status.jpeg_on_device)
        if self._view is None or self._view.identity != identity:
            self._view = _ModelView(
                identity,
                f"{spec.fingerprint}-{status.backend}",
                (spec.num_classes, spec.embedding_dim),
                Preprocessor(spec.data_config, max_pixels=self._max_pixels),
                status.jpeg_on_device,
            )
        return self._view

    async def start(self) -> None:
        await self.model.start()

    async def stop(self) -> None:
        await self.model.stop(drain_timeout_s=self._timeout_s)
        if self._cache_writes:
            await asyncio.wait(self._cache_writes, timeout=5)
        await self.cache.close()
        self._decode_pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, data: bytes) -> Inference:
        """The model's outputs for an image, from the cache when it has them.

        Raises service errors (bad image) and batching errors (overload, deadline).
        """
        view = self._model_view()
        return await self._answer(view, data, lambda: view.prepare(data))

    async def run_pixels(self, pixels: np.ndarray) -> Inference:
        """The same for pixels a client decoded and resized itself: (H, W, 3) uint8 at the
        model's input size (the inference protocol's preprocessed input)."""
        view = self._model_view()
        return await self._answer(view, _PIXELS_KEY + pixels.tobytes(), lambda: pixels)

    async def _answer(
        self, view: _ModelView, data: bytes, prepare: Callable[[], ModelInput]
    ) -> Inference:
        started = time.perf_counter()
        key = await self._key(view.namespace, data)
        with tracing.span("cache lookup", cache=self.cache.name):
            record = await self.cache.get(key)
        cached = decode_record(record, *view.shape) if record is not None else None
        if cached is not None:
            self._cache_metrics.hits.inc()
            elapsed_ms = round(1000 * (time.perf_counter() - started), 2)
            return Inference(
                cached, {"cache": elapsed_ms, "total": elapsed_ms}, batch_size=0, cache="hit"
            )
        inference, joined = await self._flights.run(
            key, lambda: self._compute(prepare, key, started)
        )
        if joined or inference.cache == "hit":  # another request's run answered this one
            self._cache_metrics.joins.inc()
            return replace(inference, cache="hit")
        self._cache_metrics.misses.inc()
        return inference

    def preprocessor(self) -> Preprocessor:
        """The serving model's preprocessing; raises NotReady when there is no model."""
        return self._model_view().preprocessor

    async def decode_for_inspection(self, data: bytes) -> tuple[Image.Image, np.ndarray]:
        """The upright image (for pictures drawn over it) and the model's input pixels."""
        preprocessor = self._model_view().preprocessor

        def decode() -> tuple[Image.Image, np.ndarray]:
            # Large JPEGs are decoded small enough for a picture (short side 4x the model's).
            image = decode_image(
                data, max_pixels=preprocessor.max_pixels, min_side=4 * preprocessor.min_side
            )
            return image, preprocessor.pixels(image)

        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, decode)

    async def cached_body(
        self, data: bytes, params: str, compute: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, Literal["hit", "miss"]]:
        """A response body for these image bytes and parameters, from the cache when there.

        Inspections (explanations, feature maps) are cached like classify results: same
        namespace (model, weights, backend), same content hash, their parameters in the key.
        """
        view = self._model_view()
        key = await self._key(f"{view.namespace}:{params}", data)
        cached = await self.cache.get(key)
        if cached is not None:
            return cached, "hit"
        body = await compute()
        self._write_behind(key, body)
        return body, "miss"

    def _write_behind(self, key: str, record: bytes) -> None:
        write = asyncio.create_task(self.cache.set(key, record))
        self._cache_writes.add(write)  # a reference, so the task is not collected mid-write
        write.add_done_callback(self._cache_writes.discard)

    async def _key(self, namespace: str, data: bytes) -> str:
        if len(data) <= _HASH_INLINE_BYTES:
            return cache_key(namespace, data)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, cache_key, namespace, data)

    async def _compute(
        self, prepare: Callable[[], ModelInput], key: str, started: float
    ) -> Inference:
        loop = asyncio.get_running_loop()
        with tracing.span("decode"):
            item = await loop.run_in_executor(self._decode_pool, prepare)
        decoded = time.perf_counter()
        reached_model()
        remaining = self._timeout_s - (decoded - started)
        priority = current_priority.get()
        with tracing.span("model", priority=priority.name.lower()):
            outcome, shared = await self.model.infer(item, max(remaining, 0.001), key, priority)
        finished = time.perf_counter()
        self._write_behind(key, encode_record(outcome.value))
        return Inference(
            outputs=outcome.value,
            timings_ms={
                "decode": round(1000 * (decoded - started), 2),
                "queue": round(1000 * outcome.queued_s, 2),
                "inference": round(1000 * outcome.run_s, 2),
                "total": round(1000 * (finished - started), 2),
            },
            batch_size=outcome.batch_size,
            cache="hit" if shared else "miss",
        )

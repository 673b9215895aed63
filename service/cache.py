"""Result cache: a repeat image is answered without the model.

Values are compact binary records (probabilities + embedding behind a versioned header).
RedisCache is fail-open: Redis down, slow or returning garbage is a miss, never an error; a
circuit breaker stops calling a failing Redis and a background probe closes it again.
MemoryCache is the in-process LRU used when no Redis is configured.
"""

import asyncio
import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service import tracing
from service.model.model_io import ModelOutputs

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sHII")  # magic, version, classes, embedding dim
_MAGIC = b"RSCR"
_VERSION = 1


def cache_key(namespace: str, data: bytes) -> str:
    """Content hash of the upload, within the namespace of one model, weights and backend."""
    return f"resnet-serve:{namespace}:{hashlib.sha256(data).hexdigest()}"


def encode_record(outputs: ModelOutputs) -> bytes:
    """One image's outputs as a cache record."""
    probabilities, embedding = outputs.probabilities, outputs.embedding
    header = _HEADER.pack(_MAGIC, _VERSION, len(probabilities), len(embedding))
    return (
        header
        + np.ascontiguousarray(probabilities, "<f4").tobytes()
        + np.ascontiguousarray(embedding, "<f4").tobytes()
    )


def decode_record(record: bytes, classes: int, dim: int) -> ModelOutputs | None:
    """The cached result, or None for anything corrupt, truncated or of another shape."""
    if len(record) != _HEADER.size + 4 * (classes + dim):
        return None
    magic, version, got_classes, got_dim = _HEADER.unpack_from(record)
    if (magic, version, got_classes, got_dim) != (_MAGIC, _VERSION, classes, dim):
        return None
    values = np.frombuffer(record, "<f4", offset=_HEADER.size)
    probabilities, embedding = values[:classes], values[classes:]
    if not (np.isfinite(values).all() and abs(float(probabilities.sum()) - 1) < 1e-3):
        return None
    return ModelOutputs(probabilities, embedding)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter("cache_hits", "Requests answered from the cache", registry=registry)
        self.misses = Counter(
            "cache_misses", "Requests the cache could not answer", registry=registry
        )
        self.errors = Counter(
            "cache_errors", "Cache operations that failed (fail-open)", ["op"], registry=registry
        )
        self.bypassed = Counter(
            "cache_bypassed",
            "Cache operations skipped while the circuit is open",
            registry=registry,
        )
        self.joins = Counter(
            "cache_dedup_joins",
            "Requests that joined an identical one in flight",
            registry=registry,
        )
        self.latency = Histogram(
            "cache_seconds",
            "Cache operation latency",
            ["op"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.circuit_open = Gauge(
            "cache_circuit_open",
            "1 while the cache backend is being bypassed",
            registry=registry,
            multiprocess_mode="livemax",  # a dead worker's value goes with it
        )


class ResultCache(Protocol):
    name: str

    async def get(self, key: str) -> bytes | None:
        """The stored record, or None (absent, expired, or the backend failing)."""
        ...

    async def set(self, key: str, record: bytes) -> None:
        """Store a record; never raises."""
        ...

    async def close(self) -> None: ...


class MemoryCache:
    """In-process LRU bounded in bytes, with the same TTL as Redis entries."""

    name = "memory"

    def __init__(self, max_bytes: int, ttl_s: float, metrics: CacheMetrics) -> None:
        self._max_bytes = max_bytes
        self._ttl_s = ttl_s
        self._metrics = metrics
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, record = entry
        if expires_at <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return record

    async def set(self, key: str, record: bytes) -> None:
        if len(record) > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self._ttl_s, record)
        self._bytes += len(record)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))  # least recently used

    def _drop(self, key: str) -> None:
        _, record = self._entries.pop(key)
        self._bytes -= len(record)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0


class RedisCache:
    """Redis with short timeouts and a circuit breaker; every failure is a miss."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        timeout_s: float,
        metrics: CacheMetrics,
        failures_to_open: int = 3,
        max_probe_interval_s: float = 5.0,
    ) -> None:
        # No client-side retries: a retry would turn a slow Redis into a slow request.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._failures_to_open = failures_to_open
        self._max_probe_interval_s = max_probe_interval_s
        self._failures = 0
        self._probe: asyncio.Task[None] | None = None

    @property
    def circuit_open(self) -> bool:
        return self._probe is not None and not self._probe.done()

    async def get(self, key: str) -> bytes | None:
        record = await self._call("get", lambda: self._redis.get(key))
        return record if isinstance(record, bytes) else None

    async def set(self, key: str, record: bytes) -> None:
        await self._call("set", lambda: self._redis.set(key, record, px=self._ttl_ms))

    async def _call(self, op: str, command: Callable[[], Awaitable[object]]) -> object:
        if self.circuit_open:
            self._metrics.bypassed.inc()
            return None
        started = time.perf_counter()
        try:
            with tracing.span(f"redis {op}"):
                async with asyncio.timeout(self._timeout_s):
                    result = await command()
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.errors.labels(op=op).inc()
            self._failed(exc)
            return None
        self._metrics.latency.labels(op=op).observe(time.perf_counter() - started)
        self._failures = 0
        return result

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures >= self._failures_to_open and not self.circuit_open:
            log.warning("cache: Redis failing (%r); bypassing it until it answers again", exc)
            self._metrics.circuit_open.set(1)
            self._probe = asyncio.create_task(self._probe_until_back(), name="redis-probe")

    async def _probe_until_back(self) -> None:
        delay = 0.25
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self._timeout_s * 4):
                    await self._redis.ping()
            except (RedisError, OSError, TimeoutError):
                delay = min(2 * delay, self._max_probe_interval_s)
                continue
            log.info("cache: Redis answers again; caching resumes")
            self._failures = 0
            self._metrics.circuit_open.set(0)
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self._redis.aclose()

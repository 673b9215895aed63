"""Result cache: hits, TTL, model isolation, single-flight, fail-open Redis, corrupt values."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import redis
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.cache import CacheMetrics, MemoryCache, decode_record, encode_record
from service.model.model_io import ModelOutputs
from service.single_flight import SingleFlight
from tests.conftest import lite0_settings
from tests.photos import jpeg
from tests.redis_server import RedisServer


@asynccontextmanager
async def running_app(tmp_path: Path, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(lite0_settings(tmp_path, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


def sample(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    registry: CollectorRegistry = http.app.state.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels) or 0.0


async def classify(http: httpx.AsyncClient, data: bytes) -> httpx.Response:
    response = await http.post("/v1/classify", files={"file": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    return response


# --- records, memory cache, single-flight ------------------------------------------------


def test_record_round_trip_and_rejects_anything_else() -> None:
    probabilities = np.full(10, 0.1, np.float32)
    embedding = np.arange(4, dtype=np.float32)
    record = encode_record(ModelOutputs(probabilities, embedding))
    restored = decode_record(record, 10, 4)
    assert restored is not None and np.array_equal(restored.embedding, embedding)
    for bad in (b"", b"garbage", record[:-1], record + b"x", b"XXXX" + record[4:]):
        assert decode_record(bad, 10, 4) is None
    assert decode_record(record, 12, 2) is None  # same length, other model's shape
    nan = encode_record(ModelOutputs(probabilities, np.full(4, np.nan, np.float32)))
    assert decode_record(nan, 10, 4) is None


async def test_memory_cache_evicts_least_recently_used_by_size() -> None:
    cache = MemoryCache(max_bytes=300, ttl_s=60, metrics=CacheMetrics(CollectorRegistry()))
    for key in "abc":
        await cache.set(key, b"x" * 100)
    assert await cache.get("a") == b"x" * 100  # a is now the most recent
    await cache.set("d", b"y" * 100)
    assert await cache.get("b") is None and await cache.get("a") is not None
    assert cache.size_bytes == 300
    await cache.set("huge", b"z" * 301)  # larger than the whole cache: not stored
    assert await cache.get("huge") is None and cache.size_bytes == 300


async def test_memory_cache_entries_expire() -> None:
    cache = MemoryCache(max_bytes=1000, ttl_s=0.05, metrics=CacheMetrics(CollectorRegistry()))
    await cache.set("k", b"v")
    await asyncio.sleep(0.1)
    assert await cache.get("k") is None and cache.size_bytes == 0


async def test_single_flight_runs_once_and_cancels_when_nobody_waits() -> None:
    flights: SingleFlight[int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*callers)
    assert runs == 1 and [r[0] for r in results] == [42] * 5
    assert [r[1] for r in results].count(False) == 1  # one leader, four joined

    gate.clear()
    lonely = asyncio.create_task(flights.run("other", work))
    await asyncio.sleep(0.01)
    lonely.cancel()
    await asyncio.sleep(0.01)
    assert flights.in_flight == 0  # the work was cancelled with its last caller


# --- the service with a real Redis -------------------------------------------------------


async def test_hit_after_miss_skips_the_model(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url) as http:
        first = await classify(http, jpeg("chelsea"))
        assert first.headers["x-cache"] == "miss" and first.json()["cache"] == "miss"
        await asyncio.sleep(0.05)  # the cache write happens after the response
        forwards = sample(http, "batcher_batch_size_sum", version="default")
        second = await classify(http, jpeg("chelsea"))
        assert second.headers["x-cache"] == "hit" and second.json()["cache"] == "hit"
        assert second.json()["predictions"] == first.json()["predictions"]
        assert sample(http, "batcher_batch_size_sum", version="default") == forwards
        embed = await http.post("/v1/embed", files={"file": ("x.jpg", jpeg("chelsea"))})
        assert embed.headers["x-cache"] == "hit"
        assert sample(http, "cache_hits_total") == 2 and sample(http, "cache_misses_total") == 1
    assert len(redis_server.client().keys("resnet-serve:*")) == 1


async def test_entries_expire_after_the_ttl(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url, cache_ttl_s=0.3) as http:
        await classify(http, jpeg("rocket"))
        await asyncio.sleep(0.05)
        assert (await classify(http, jpeg("rocket"))).headers["x-cache"] == "hit"
        await asyncio.sleep(0.4)
        assert (await classify(http, jpeg("rocket"))).headers["x-cache"] == "miss"


async def test_models_never_share_entries(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path / "a", redis_url=redis_server.url) as real:
        await classify(real, jpeg("coffee"))
        await asyncio.sleep(0.05)
    async with running_app(tmp_path / "b", redis_url=redis_server.url, weights="random") as other:
        response = await classify(other, jpeg("coffee"))
        assert response.headers["x-cache"] == "miss"
        await asyncio.sleep(0.05)
    assert len(redis_server.client().keys("resnet-serve:*")) == 2


async def test_identical_concurrent_requests_run_the_model_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url, max_wait_ms=50) as http:
        responses = await asyncio.gather(*(classify(http, jpeg("astronaut")) for _ in range(32)))
        images_run = sample(http, "batcher_batch_size_sum", version="default")
        assert images_run == 1  # one image through the model
        assert [r.headers["x-cache"] for r in responses].count("miss") == 1
        assert sample(http, "cache_dedup_joins_total") + sample(http, "cache_hits_total") == 31
        assert len({r.text.split('"timings_ms"')[0] for r in responses}) <= 2  # same answers


async def test_redis_down_then_back(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url) as http:
        await classify(http, jpeg("coffee"))
        redis_server.kill()
        for i in range(6):  # every request still succeeds, from the model
            response = await classify(http, jpeg("coffee") + bytes([i]))
            assert response.headers["x-cache"] == "miss"
        assert sample(http, "cache_circuit_open") == 1
        errors = sum(sample(http, "cache_errors_total", op=op) for op in ("get", "set"))
        assert errors >= 3  # enough consecutive failures to open the circuit

        redis_server.start()  # an empty Redis on the same port
        deadline = time.monotonic() + 15
        # Bounded wait for the background probe to notice Redis is back.
        while sample(http, "cache_circuit_open") == 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert sample(http, "cache_circuit_open") == 0
        await classify(http, jpeg("rocket"))
        await asyncio.sleep(0.05)
        assert (await classify(http, jpeg("rocket"))).headers["x-cache"] == "hit"


async def test_a_slow_redis_is_a_miss_not_a_slow_request(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url, cache_timeout_ms=50) as http:
        await classify(http, jpeg("chelsea"))  # warm the model path
        asleep = redis.Redis.from_url(redis_server.url, socket_timeout=None)
        blocker = asyncio.create_task(
            asyncio.to_thread(asleep.execute_command, "DEBUG", "SLEEP", "3")
        )
        await asyncio.to_thread(wait_until_unresponsive, redis_server.url)
        response = await classify(http, jpeg("chelsea") + b"slow")
        assert response.headers["x-cache"] == "miss"
        # Answered while Redis still slept: the request did not wait for the cache.
        assert not blocker.done()
        await blocker


def wait_until_unresponsive(url: str) -> None:
    """Returns once a PING goes unanswered for 50 ms: Redis has begun its sleep."""
    probe = redis.Redis.from_url(url, socket_timeout=0.05)
    deadline = time.monotonic() + 60  # bounded: a Redis that never sleeps fails the test
    while time.monotonic() < deadline:
        try:
            probe.ping()
        except redis.TimeoutError:
            return
    raise AssertionError("DEBUG SLEEP never made Redis unresponsive")


async def test_a_corrupt_value_is_a_miss(tmp_path: Path, redis_server: RedisServer) -> None:
    async with running_app(tmp_path, redis_url=redis_server.url) as http:
        first = await classify(http, jpeg("coffee"))
        await asyncio.sleep(0.05)
        client = redis_server.client()
        (key,) = client.keys("resnet-serve:*")
        client.set(key, b"RSCR\x01\x00 planted garbage")
        response = await classify(http, jpeg("coffee"))
        assert response.headers["x-cache"] == "miss"
        assert response.json()["predictions"] == first.json()["predictions"]
        await asyncio.sleep(0.05)
        assert (await classify(http, jpeg("coffee"))).headers["x-cache"] == "hit"  # rewritten

"""End to end: a real uvicorn process over TCP with concurrent clients."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest.chaos.oversize_bodies import oversize
from tests.e2e.server import UI_ON, Server, metric, start_server
from tests.photos import jpeg

pytestmark = pytest.mark.e2e


def unique_jpegs(count: int) -> list[bytes]:
    # Trailing bytes after the JPEG end marker make each upload unique without changing pixels.
    return [jpeg("coffee") + f"#{i}".encode() for i in range(count)]


async def post_all(url: str, images: list[bytes], timeout_s: float = 60) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as http:
        return await asyncio.gather(
            *(http.post("/v1/classify", files={"file": ("a.jpg", d, "image/jpeg")}) for d in images)
        )


BATCH_OF_8 = {"RESNET_SERVE_MAX_BATCH_SIZE": "8"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service (the web page on) for the tests that leave it running as it was."""
    running = start_server(tmp_path_factory.mktemp("shared"), BATCH_OF_8 | UI_ON)
    yield running
    running.stop(signal.SIGKILL)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A service of its own, for a test that stops it."""
    running = start_server(tmp_path, BATCH_OF_8)
    yield running
    running.stop(signal.SIGKILL)


def test_container_healthcheck_passes_and_process_metrics_are_exported(shared: Server) -> None:
    server = shared
    port = server.url.rsplit(":", 1)[1]
    check = subprocess.run(
        [sys.executable, "-m", "service.commands.healthcheck"],
        env=os.environ | {"RESNET_SERVE_PORT": port},
        timeout=30,
    )
    assert check.returncode == 0
    assert metric(httpx.get(f"{server.url}/metrics").text, "process_cpu_seconds_total") > 0


def test_an_idle_service_sleeps(shared: Server) -> None:
    """Nothing polls on the event loop of an idle service (the web page included): an idle
    process that wakes a thousand times a second takes CPU from the model on a small machine."""
    server = shared
    loop_thread = psutil.Process(server.process.pid)  # uvicorn's event loop: the main thread
    assert httpx.get(f"{server.url}/ui/", timeout=30).status_code == 200  # the page served
    time.sleep(1)
    before = loop_thread.num_ctx_switches().voluntary
    time.sleep(3)
    wakeups_per_second = (loop_thread.num_ctx_switches().voluntary - before) / 3
    assert wakeups_per_second < 100, wakeups_per_second


def test_concurrent_clients_are_batched(shared: Server) -> None:
    server = shared  # nothing classified on it before
    responses = asyncio.run(post_all(server.url, unique_jpegs(32)))
    assert [r.status_code for r in responses] == [200] * 32
    assert all(r.json()["predictions"][0]["label"] == "espresso" for r in responses)
    text = httpx.get(f"{server.url}/metrics").text
    batches = metric(text, "batcher_batch_size_count")
    assert metric(text, "batcher_batch_size_sum") == 32  # warm-up bypasses the batcher
    assert batches < 32  # some batches held more than one image
    assert metric(text, "batcher_batch_size_bucket", le="1.0") < batches


def test_sigterm_finishes_in_flight_requests_then_exits(server: Server) -> None:
    async def scenario() -> list[httpx.Response]:
        requests = asyncio.create_task(post_all(server.url, unique_jpegs(16)))
        await asyncio.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        return await requests

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 16
    # uvicorn re-raises the signal once its graceful shutdown is done.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()


def test_disconnected_client_is_dropped_before_the_model(tmp_path: Path) -> None:
    slow = start_server(
        tmp_path,
        {
            "RESNET_SERVE_MAX_BATCH_SIZE": "1",
            "RESNET_SERVE_MAX_WAIT_MS": "0",
            # The backlog is the point: under a slow machine's load the latency target would
            # refuse part of it at once, and the abandoned request with it.
            "RESNET_SERVE_TARGET_LATENCY_MS": "600000",
        },
    )
    try:

        async def scenario() -> list[httpx.Response]:
            # Enough backlog to outlast the abandoned request's 0.3 s at batch 1.
            backlog = asyncio.create_task(post_all(slow.url, unique_jpegs(60)))
            await asyncio.sleep(0.2)  # the backlog is queued; the next request waits behind it
            with pytest.raises(httpx.ReadTimeout):
                await post_all(slow.url, [jpeg("chelsea")], timeout_s=0.3)
            return await backlog

        assert [r.status_code for r in asyncio.run(scenario())] == [200] * 60
        text = httpx.get(f"{slow.url}/metrics").text
        assert metric(text, "batcher_batch_size_sum") == 60  # the abandoned image never ran
        assert 'status="499"' in text
    finally:
        slow.stop(signal.SIGKILL)


def test_oversize_bodies_are_refused_at_once_and_memory_stays_bounded(shared: Server) -> None:
    """600 MB declared, and chunked bodies past the route's limit: every one 413 before its
    body is buffered; the process's memory barely moves, and real images are still served."""
    host, port = shared.url.removeprefix("http://").split(":")
    process = psutil.Process(shared.process.pid)
    before = process.memory_info().rss
    Sent = list[tuple[str, float, int]]  # status line, seconds, bytes sent before the answer

    async def scenario() -> tuple[Sent, Sent, list[int]]:
        refused = asyncio.gather(
            *(oversize(host, int(port), 600 << 20, "json", False) for _ in range(32))
        )
        streamed = asyncio.gather(
            *(oversize(host, int(port), 100 << 20, "json", True) for _ in range(4))
        )
        served = post_all(shared.url, unique_jpegs(8))
        answers = await asyncio.gather(refused, streamed, served)
        return answers[0], answers[1], [r.status_code for r in answers[2]]

    refused, streamed, served = asyncio.run(scenario())
    assert all(status.startswith("HTTP/1.1 413") for status, _, _ in refused), refused[:2]
    # 413 past the route's limit, or 429 sooner: past its first MiB a body is large, and only
    # a few large bodies are read at once (JSON ones draw on one byte budget too)
    refused_codes = ("HTTP/1.1 413", "HTTP/1.1 429")
    assert all(status.startswith(refused_codes) for status, _, _ in streamed), streamed[:2]
    # Refused near the route's limit (27 MB for one 20 MB image as base64), not at 100 MB.
    assert all(sent < 40 << 20 for _, _, sent in streamed), [sent for _, _, sent in streamed]
    # Real images beside them are answered: served, or refused by the latency target on a
    # machine another test loads too (loadtest.chaos.oversize_bodies holds them to 200).
    assert set(served) <= {200, 429} and 200 in served, served
    assert process.memory_info().rss - before < 256 << 20

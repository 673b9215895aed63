"""The worker transport: calls, cancellation, connection loss, and pixel slots."""

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from batching import QueueFull
from service.logs import RequestIdFilter, current_request_id
from service.transport.rpc import CallCancelled, Peer, RpcClient, RpcServer, WorkerUnavailable
from service.transport.slots import PixelSlots, SlotReader


class Worker:
    """A server whose `hold` calls wait until released; records cancellations."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0

    async def echo(self, _: Peer, value: object) -> object:
        return value

    async def hold(self, _: Peer) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "done"

    async def fail(self, _: Peer) -> None:
        raise QueueFull(7, 3.0)

    async def whose(self, _: Peer) -> str:
        logging.getLogger("worker").warning("serving")
        return current_request_id.get()


@contextlib.asynccontextmanager
async def connected(path: Path, worker: Worker) -> AsyncIterator[RpcClient]:
    handlers = {
        "echo": worker.echo,
        "hold": worker.hold,
        "fail": worker.fail,
        "whose": worker.whose,
    }
    server = await RpcServer(handlers).start(path)
    client = RpcClient(path, "test")
    client.start()
    try:
        await wait_connected(client)
        yield client
    finally:
        await client.stop()
        server.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "w.sock"


async def test_calls_return_values_and_errors_with_their_fields(socket_path: Path) -> None:
    async with connected(socket_path, Worker()) as client:
        vector = np.arange(4, dtype=np.float32)
        assert np.array_equal(await client.call("echo", vector), vector)
        with pytest.raises(QueueFull) as raised:
            await client.call("fail")
        assert raised.value.retry_after_s == 3.0 and raised.value.depth == 7


async def test_a_call_carries_the_request_id_into_the_workers_log_lines(
    socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    async with connected(socket_path, Worker()) as client:
        token = current_request_id.set("req-42")
        try:
            assert await client.call("whose") == "req-42"
        finally:
            current_request_id.reset(token)
        assert await client.call("whose") == "-"  # outside a request
    served = [r for r in caplog.records if r.name == "worker"]
    assert [r.request_id for r in served] == ["req-42", "-"]  # type: ignore[attr-defined]


async def test_a_cancelled_call_is_cancelled_in_the_worker_and_still_settles(
    socket_path: Path,
) -> None:
    worker = Worker()
    async with connected(socket_path, worker) as client:
        call_id, reply = client.send("hold")
        await asyncio.wait_for(worker.started.wait(), 5)
        client.cancel(call_id)
        with pytest.raises(CallCancelled):
            await asyncio.wait_for(reply, 5)  # what frees the caller's slot
        assert worker.cancelled == 1 and client.in_flight == 0


async def test_a_call_cancelled_before_it_started_is_answered(socket_path: Path) -> None:
    worker = Worker()
    async with connected(socket_path, worker) as client:
        call_id, reply = client.send("hold")
        client.cancel(call_id)  # both frames arrive together: the task never starts
        with pytest.raises(CallCancelled):
            await asyncio.wait_for(reply, 5)
        assert not worker.started.is_set() and client.in_flight == 0


def start_worker(path: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.workers.rpc_worker", str(path)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    with process.stdout:  # it prints this one line only
        assert process.stdout.readline() == b"listening\n"
    return process


async def wait_connected(client: RpcClient) -> None:
    await asyncio.wait_for(client.wait_connected(), 10)


async def test_worker_death_fails_pending_calls_and_a_new_worker_is_found(
    socket_path: Path,
) -> None:
    worker = start_worker(socket_path)
    client = RpcClient(socket_path, "test")
    client.start()
    try:
        await wait_connected(client)
        _, reply = client.send("hold")
        worker.kill()  # kill -9, with the call in flight
        worker.wait()
        with pytest.raises(WorkerUnavailable):
            await asyncio.wait_for(reply, 5)  # settles: whatever the caller holds is freed
        with pytest.raises(WorkerUnavailable):
            client.send("echo", 1)  # no connection: refused at once, nothing queued
        worker = start_worker(socket_path)  # what the supervisor does
        await wait_connected(client)
        assert await client.call("echo", 2) == 2
    finally:
        await client.stop()
        worker.kill()
        worker.wait()


async def test_a_new_client_waits_for_a_listening_worker_and_only_for_one(
    socket_path: Path,
) -> None:
    """How a replacement HTTP worker starts: connected before it takes requests if the worker
    is up; at once if it is not (loading), or if its socket is a dead worker's."""
    client = RpcClient(socket_path, "test")
    client.start()
    try:
        await asyncio.wait_for(client.connected_if_listening(), 0.5)  # no socket: no wait
        assert not client.connected
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(socket_path))  # a socket file nobody listens on, as a kill -9 leaves
        dead.close()
        started = time.monotonic()
        await client.connected_if_listening(timeout_s=5)  # one attempt, refused: no wait
        assert not client.connected and time.monotonic() - started < 2.5
        server = await RpcServer({}).start(socket_path)
        try:
            await client.connected_if_listening()
            assert client.connected
        finally:
            server.close()
    finally:
        await client.stop()


def test_slots_are_shared_refuse_when_exhausted_and_are_reused(tmp_path: Path) -> None:
    path = tmp_path / "slots.pixels"
    slots = PixelSlots(path, 2, (4, 4, 3))
    reader = SlotReader(path, 2, (4, 4, 3))
    try:
        image = np.full((4, 4, 3), 7, np.uint8)
        first = slots.put(image)
        assert np.array_equal(reader.copy(first), image)  # seen through the other mapping
        second = slots.put(image + 1)
        with pytest.raises(QueueFull):
            slots.put(image)
        assert slots.in_use == 2
        slots.release(first)
        assert slots.put(image + 2) == first and slots.in_use == 2
        slots.release(first)
        slots.release(second)
        assert slots.in_use == 0
        with pytest.raises(ValueError):
            slots.put(np.zeros((5, 5, 3), np.uint8))
    finally:
        reader.close()
        slots.close()
    assert not path.exists()

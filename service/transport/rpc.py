"""Calls between the service's own processes over a Unix socket.

Frames are a 4-byte length and a pickle (both ends are this package, started by the same
supervisor; the socket lives in a directory only the service user can enter). Calls are
multiplexed on one connection and can be cancelled. A call's reply future settles exactly
once: with the reply, or with WorkerUnavailable when the connection goes away, so whatever a
caller holds for a call (a shared-memory slot) is released in both cases. A call carries the
caller's request id, so what the worker logs while serving it names the request, and its
trace context (service.tracing), so the worker's spans join the request's trace.
"""

import asyncio
import contextlib
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from service import tracing
from service.errors import NotReady
from service.logs import current_request_id

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_MAX_FRAME = 256 * 1024 * 1024  # an item PUT carries its image: up to the upload limit
# A socket file whose worker does not answer in this long is a dead worker's (restarting).
_PEER_WAIT_S = 2.0


class WorkerUnavailable(NotReady):
    """The worker process is not reachable (starting, restarting, or gone): answered 503."""


class CallCancelled(Exception):
    """The caller cancelled; the worker dropped the call."""


def _encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > _MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes is over the limit")
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(length))
    return message


def _retrieve(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


class Peer:
    """One client connection as a server's handlers see it: state that lives as long as it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)

    def close(self) -> None:
        for callback in self._on_close:
            callback()


Handler = Callable[..., Awaitable[Any]]  # (peer, *args) -> reply value


def _settle(
    calls: dict[int, "asyncio.Task[None]"], call_id: int, writer: asyncio.StreamWriter
) -> Callable[["asyncio.Task[None]"], None]:
    """When a call's task ends. A task cancelled before it started never ran its own reply
    code (the cancel came in the same read as the call): answer for it, or the caller would
    wait, holding its slot, for ever."""

    def settle(task: "asyncio.Task[None]") -> None:
        calls.pop(call_id, None)
        if task.cancelled() and not writer.is_closing():
            writer.write(_encode(("error", call_id, CallCancelled("cancelled before it ran"))))

    return settle


def _remove_stale(path: Path) -> None:
    """A socket file left behind by a predecessor that was killed."""
    path.unlink(missing_ok=True)


class RpcServer:
    """Serves `handlers` by name; each call runs as its own task, so calls are concurrent."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = handlers

    async def start(self, path: Path) -> asyncio.Server:
        _remove_stale(path)
        return await asyncio.start_unix_server(self._serve, path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer()
        calls: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                message = await _read(reader)
                if message[0] == "call":
                    _, call_id, method, args, request_id, carrier = message
                    task = asyncio.create_task(
                        self._run(peer, writer, call_id, method, args, request_id, carrier)
                    )
                    calls[call_id] = task
                    task.add_done_callback(_settle(calls, call_id, writer))
                elif message[0] == "cancel" and (running := calls.get(message[1])) is not None:
                    running.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            pass  # the client went away (or sent garbage): drop its calls
        except asyncio.CancelledError:
            # The server is shutting down. Ending normally matters: Python 3.11's stream
            # callback calls exception() on this task and raises if it was cancelled.
            pass
        finally:
            for task in list(calls.values()):
                task.cancel()
            peer.close()
            writer.close()

    async def _run(
        self,
        peer: Peer,
        writer: asyncio.StreamWriter,
        call_id: int,
        method: str,
        args: tuple[Any],
        request_id: str,
        carrier: tracing.Carrier | None,
    ) -> None:
        current_request_id.set(request_id)  # this task's own context: the call's log lines
        try:
            with tracing.continued(f"rpc {method}", carrier, request_id=request_id):
                value = await self._handlers[method](peer, *args)
            reply: tuple[Any, ...] = ("ok", call_id, value)
        except asyncio.CancelledError:
            reply = ("error", call_id, CallCancelled(method))
        except Exception as exc:  # the caller gets the error; this worker keeps serving
            reply = ("error", call_id, exc)
        if writer.is_closing():
            return
        try:
            frame = _encode(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            log.exception("reply to %s cannot be sent", method)
            frame = _encode(("error", call_id, RuntimeError(f"unpicklable reply: {exc!r}")))
        writer.write(frame)


class RpcClient:
    """One connection to a worker, re-established whenever it drops.

    `on_connect` runs after each (re)connection before the client counts as connected (a model
    client fetches the model's description there).
    """

    def __init__(
        self,
        path: Path,
        name: str,
        on_connect: Callable[["RpcClient"], Awaitable[None]] | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self._on_connect = on_connect
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()  # someone waits: try again without the back-off
        self._attempt_failed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def connected_if_listening(self, timeout_s: float = _PEER_WAIT_S) -> None:
        """Wait, at most `timeout_s`, for the connection if the worker is already listening
        (its socket is there): one attempt is made at once, not at the next retry. A worker
        still starting up, or a dead one's socket (the attempt fails), is not waited for."""
        if self.connected or not self.path.exists():
            return
        self._attempt_failed.clear()
        self._retry_now.set()
        attempt_failed = asyncio.ensure_future(self._attempt_failed.wait())
        connected = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait(
                (attempt_failed, connected), timeout=timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            attempt_failed.cancel()
            connected.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_connected(), name=f"rpc-{self.name}")

    async def open(self) -> None:
        """Start connecting in the background; wait briefly for a worker that listens."""
        self.start()
        await self.connected_if_listening()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def send(self, method: str, *args: Any) -> tuple[int, "asyncio.Future[Any]"]:
        """Start a call; its future settles with the reply or WorkerUnavailable, never cancelled
        by the caller (await it shielded, and `cancel` the call instead)."""
        if self._writer is None or self._writer.is_closing():
            raise WorkerUnavailable(f"the {self.name} worker is not reachable")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        message = ("call", call_id, method, args, current_request_id.get(), tracing.carrier())
        self._writer.write(_encode(message))
        self._pending[call_id] = future
        future.add_done_callback(_retrieve)  # a cancelled caller never reads the outcome
        return call_id, future

    def cancel(self, call_id: int) -> None:
        if call_id in self._pending and self._writer is not None and not self._writer.is_closing():
            self._writer.write(_encode(("cancel", call_id)))

    async def call(self, method: str, *args: Any, cancellable: bool = True) -> Any:
        """Call and wait. Cancelling the wait cancels the call in the worker, unless
        `cancellable` is False (a write that must finish once started)."""
        call_id, future = self.send(method, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if cancellable:
                self.cancel(call_id)
            raise

    async def _keep_connected(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                # Not listening yet (loading the model) or restarting: retry with backoff.
                self._attempt_failed.set()
                self._retry_now.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._retry_now.wait()
                delay = min(2 * delay, 1.0)
                continue
            delay = 0.05
            receiving = asyncio.create_task(self._receive(reader))
            try:
                if self._on_connect is not None:
                    await self._on_connect(self)
                self._connected.set()
                log.info("connected to the %s worker", self.name)
                await receiving
            except (WorkerUnavailable, OSError) as exc:
                log.warning("the %s worker did not answer its set-up call: %s", self.name, exc)
            finally:
                self._connected.clear()
                receiving.cancel()
                self._writer.close()
                self._writer = None
                self._fail_pending()
            log.warning("lost the %s worker; reconnecting", self.name)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, call_id, value = await _read(reader)
                future = self._pending.pop(call_id, None)
                if future is None or future.done():
                    continue
                if kind == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            return
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(f"the {self.name} worker went away"))

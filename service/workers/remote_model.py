"""The HTTP worker's side of the model: pixels into shared memory, the slot number over RPC."""

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from batching import BatchOutcome, DeadlineExceeded, QueueFull
from service.errors import NotReady
from service.model.jpeg_upload import JpegUpload
from service.model.model_io import ModelInput, ModelOutputs
from service.model_client import HUNG_MESSAGE, ModelStatus, RecentRefusal
from service.workers.operations import ModelOperations as MODEL
from service.workers.rpc import RpcClient, WorkerUnavailable
from service.workers.slots import PixelSlots

# The model worker answers a deadline itself; this margin only guards against a hung worker.
_HUNG_MARGIN_S = 2.0
_CHECK_TIMEOUT_S = 2.0  # /readyz asks the model worker; a worker this slow is not ready


class RemoteModel:
    """A ModelClient for the model worker(s): one connection each, the least busy one used."""

    def __init__(
        self,
        sockets: list[Path],
        slots_path: Path,
        slot_count: int,
        registry: CollectorRegistry,
    ) -> None:
        self._clients = [
            RpcClient(path, f"model-{i}", on_connect=self._attach) for i, path in enumerate(sockets)
        ]
        self._slots_path = slots_path
        self._slot_count = slot_count
        self._slots: PixelSlots | None = None
        self._status: dict[str, ModelStatus] = {}
        self._refusal = RecentRefusal()
        self._in_use = Gauge(
            "model_slots_in_use",
            "Shared-memory pixel slots holding an image the model worker has not answered",
            registry=registry,
            multiprocess_mode="livesum",
        )

    @property
    def ready(self) -> bool:
        return any(client.connected for client in self._clients)

    def status(self) -> ModelStatus:
        # A hung model is not judged here from a stale description: the model worker itself
        # answers images 503 while its batch is stuck, and `check` asks it afresh.
        client = self._pick()
        # Per HTTP worker: its images waiting at (or in) the model.
        in_flight = sum(c.in_flight for c in self._clients)
        return replace(self._status[client.name], queue_depth=in_flight)

    def admit(self, ahead: int = 0) -> None:
        self._refusal.check(waiting_there=any(client.in_flight for client in self._clients))

    async def check(self) -> None:
        client = self._pick()
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_S):
                status = await MODEL.describe.call(client)
        except TimeoutError:
            raise NotReady(f"the model worker did not answer in {_CHECK_TIMEOUT_S:.0f} s") from None
        self._status[client.name] = status
        if status.hung:
            raise NotReady(HUNG_MESSAGE)

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        client = self._pick()
        if isinstance(item, JpegUpload):  # compressed bytes: no slot needed
            call_id, reply = MODEL.infer.send(client, item, timeout_s, key)
        else:
            call_id, reply = self._send_pixels(client, item, timeout_s, key)
        try:
            async with asyncio.timeout(timeout_s + _HUNG_MARGIN_S):
                answer: tuple[BatchOutcome[ModelOutputs], bool] = await asyncio.shield(reply)
                return answer
        except QueueFull as refused:
            self._refusal.remember(refused)
            raise
        except TimeoutError:
            client.cancel(call_id)
            raise DeadlineExceeded(
                f"the model worker did not answer in {timeout_s:.1f} s"
            ) from None
        except asyncio.CancelledError:
            client.cancel(call_id)  # dropped there if its batch has not started
            raise

    def _send_pixels(
        self, client: RpcClient, pixels: np.ndarray, timeout_s: float, key: str
    ) -> tuple[int, "asyncio.Future[tuple[BatchOutcome[ModelOutputs], bool]]"]:
        assert self._slots is not None  # attached before the client counts as connected
        slots = self._slots
        slot = slots.put(pixels)  # QueueFull when every slot waits at the model
        try:
            call_id, reply = MODEL.infer_slot.send(client, slot, timeout_s, key)
        except BaseException:
            slots.release(slot)
            raise
        self._in_use.set(slots.in_use)

        def release(_: object) -> None:
            slots.release(slot)
            self._in_use.set(slots.in_use)

        reply.add_done_callback(release)  # the reply, or the connection dropping
        return call_id, reply

    def _pick(self) -> RpcClient:
        connected = [client for client in self._clients if client.connected]
        if not connected:
            raise WorkerUnavailable("the model worker is not running (starting or restarting)")
        return min(connected, key=lambda client: client.in_flight)

    async def _attach(self, client: RpcClient) -> None:
        status = await MODEL.describe.call(client)
        height, width = status.spec.data_config["input_size"][1:]
        shape = (height, width, 3)
        if self._slots is None:
            self._slots = PixelSlots(self._slots_path, self._slot_count, shape)
        elif self._slots.shape != shape:
            raise NotReady(f"model workers disagree on the input size: {shape}")
        await MODEL.attach.call(client, str(self._slots.path), self._slot_count, shape)
        self._status[client.name] = status

    async def start(self) -> None:
        for client in self._clients:
            client.start()
        await asyncio.gather(*(client.connected_if_listening() for client in self._clients))

    async def connected_if_listening(self) -> None:
        await asyncio.gather(*(client.connected_if_listening() for client in self._clients))

    async def stop(self, drain_timeout_s: float) -> None:
        # uvicorn has already drained the requests; what is left is failed by the clients.
        for client in self._clients:
            await client.stop()
        if self._slots is not None:
            self._slots.close()

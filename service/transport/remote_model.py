"""The model in another process, as a ModelClient: a model worker over its Unix socket, or a
Ray Serve Model deployment, through the same `Link` protocol.

One client for both transports, so the deadline margin, the refusal memory, the least-busy
choice and the status a request sees are the same wherever the model runs. What differs is
how pixels travel: to a model worker on this machine through shared-memory slots (the slot
number over the socket), to a Ray replica as an array in the call (Ray's object store).
"""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Gauge

from batching import BatchOutcome, DeadlineExceeded, Priority, QueueFull
from batching.metric_families import family
from service.errors import NotReady
from service.hosting.client import HUNG_MESSAGE, ModelStatus, RecentRefusal
from service.hosting.hop_batch import HopBatch, Outcome
from service.model.jpeg_upload import JpegUpload
from service.model.model_io import ModelInput, ModelOutputs
from service.transport.hop_gather import HopGather
from service.transport.operations import Link
from service.transport.operations import ModelOperations as MODEL
from service.transport.rpc import RpcClient, WorkerUnavailable
from service.transport.slots import PixelSlots

# The host answers a deadline itself; this margin only guards against a hung one.
_HUNG_MARGIN_S = 2.0
_CHECK_TIMEOUT_S = 2.0  # /readyz asks the host; one this slow is not ready

Answer = tuple[BatchOutcome[ModelOutputs], bool]


class _Slots:
    """Shared-memory pixel slots shared by the connections to this machine's model workers:
    made at the first connection, with the input size the worker describes."""

    def __init__(self, path: Path, count: int, registry: CollectorRegistry) -> None:
        self.path = path
        self.count = count
        self.slots: PixelSlots | None = None
        self._in_use = Gauge(
            "model_slots_in_use",
            "Shared-memory pixel slots holding an image the model worker has not answered",
            registry=registry,
            multiprocess_mode="livesum",
        )

    async def attach(self, client: RpcClient, status: ModelStatus) -> None:
        height, width = status.spec.data_config["input_size"][1:]
        shape = (height, width, 3)
        if self.slots is None:
            self.slots = PixelSlots(self.path, self.count, shape)
        elif self.slots.shape != shape:
            raise NotReady(f"model workers disagree on the input size: {shape}")
        await MODEL.attach.call(client, str(self.slots.path), self.count, shape)

    def send(
        self, client: RpcClient, pixels: np.ndarray, timeout_s: float, key: str, priority: Priority
    ) -> tuple[int, "asyncio.Future[Answer]"]:
        """The pixels into a slot and its number to the worker; the slot is released when
        the worker answers or the connection drops, never before (it may still read it)."""
        assert self.slots is not None  # attached before the client counts as connected
        slots = self.slots
        slot = slots.put(pixels)  # QueueFull when every slot waits at the model
        try:
            call_id, reply = MODEL.infer_slot.send(client, slot, timeout_s, key, priority)
        except BaseException:
            slots.release(slot)
            raise
        self._in_use.set(slots.in_use)

        def release(_: object) -> None:
            slots.release(slot)
            self._in_use.set(slots.in_use)

        reply.add_done_callback(release)
        return call_id, reply

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()


class RemoteModel:
    """A ModelClient for model hosts in other processes: the least busy link is used."""

    def __init__(
        self,
        links: Sequence[Link],
        what: str,
        slots: _Slots | None = None,
        gather: HopGather | None = None,
    ) -> None:
        self.links = list(links)
        self._what = what  # "the model worker", "the Model replica": for errors
        self._slots = slots
        self._gather = gather  # images in batched calls (Ray), else one call an image
        self._status: dict[str, ModelStatus] = {}
        self._in_flight: Counter[str] = Counter()  # by link name: images sent, not answered
        # By class: a bulk image refused says nothing of an interactive one's chances.
        self._refusals = {priority: RecentRefusal() for priority in Priority}

    @classmethod
    def over_sockets(
        cls, sockets: Sequence[Path], slots_path: Path, slot_count: int, registry: CollectorRegistry
    ) -> "RemoteModel":
        """Model workers on this machine, one connection each; pixels through shared memory."""
        model = cls([], "the model worker", _Slots(slots_path, slot_count, registry))
        model.links = [
            RpcClient(path, f"model-{i}", on_connect=model._attach)
            for i, path in enumerate(sockets)
        ]
        return model

    @classmethod
    def over_ray(
        cls, link: Link, window_s: float, calls_out: int, registry: CollectorRegistry
    ) -> "RemoteModel":
        """The Model deployment (a link to its Serve handle); Ray routes each call to a
        replica. Images go in batched calls (service.transport.hop_gather: gathered for up to
        `window_s` while a call is out, held while `calls_out` are); the calls and the
        images they carried are counted on `registry`."""
        counter = prometheus_client.Counter
        calls = family(registry, counter, "model_hop_calls", "Calls that carried images", [])
        images = family(registry, counter, "model_hop_images", "Images those calls carried", [])

        def send(batch: HopBatch) -> Awaitable[list[Outcome]]:
            return MODEL.infer_many.call(link, batch)

        def counted(carried: int) -> None:
            calls.inc()
            images.inc(carried)

        # One image a call until the replica's batch size is known (start).
        gather = HopGather(send, window_s, 1, calls_out, on_call=counted)
        return cls([link], "the Model replica", gather=gather)

    @property
    def ready(self) -> bool:
        return any(link.connected and link.name in self._status for link in self.links)

    @property
    def idle(self) -> bool:
        return self._in_flight.total() == 0

    def status(self) -> ModelStatus:
        # A hung model is not judged here from a stale description: the host itself answers
        # images 503 while its batch is stuck, and `check` asks it afresh.
        link = self._pick()
        # Per client: its images waiting at (or in) the model.
        return replace(self._status[link.name], queue_depth=self._in_flight.total())

    def admit(self, ahead: int = 0, priority: Priority = Priority.INTERACTIVE) -> None:
        # The host judges each image on arrival; here its last refusal holds while images of
        # this client wait there, or are on their way to it (`ahead`: admitted, not sent yet).
        self._refusals[priority].check(waiting_there=self._in_flight.total() + ahead > 0)

    async def check(self) -> None:
        link = self._pick()
        try:
            async with asyncio.timeout(_CHECK_TIMEOUT_S):
                status = await MODEL.describe.call(link)
        except TimeoutError:
            raise NotReady(f"{self._what} did not answer in {_CHECK_TIMEOUT_S:.0f} s") from None
        self._remember(link, status)
        if status.hung:
            raise NotReady(HUNG_MESSAGE)

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> Answer:
        link = self._pick()
        self._in_flight[link.name] += 1
        try:
            async with asyncio.timeout(timeout_s + _HUNG_MARGIN_S):
                if self._gather is not None:
                    return await self._gather.infer(item, timeout_s, key, priority)
                if self._slots is not None and not isinstance(item, JpegUpload):
                    assert isinstance(link, RpcClient)
                    return await self._through_slot(link, item, timeout_s, key, priority)
                answer: Answer = await MODEL.infer.call(link, item, timeout_s, key, priority)
                return answer
        except QueueFull as refused:
            self._refusals[priority].remember(refused)
            raise
        except TimeoutError:
            raise DeadlineExceeded(f"{self._what} did not answer in {timeout_s:.1f} s") from None
        finally:
            self._in_flight[link.name] -= 1

    async def _through_slot(
        self, client: RpcClient, pixels: np.ndarray, timeout_s: float, key: str, priority: Priority
    ) -> Answer:
        assert self._slots is not None
        call_id, reply = self._slots.send(client, pixels, timeout_s, key, priority)
        try:
            return await asyncio.shield(reply)
        except asyncio.CancelledError:
            client.cancel(call_id)  # dropped there if its batch has not started
            raise

    def _remember(self, link: Link, status: ModelStatus) -> None:
        self._status[link.name] = status
        if self._gather is not None:  # a call carries up to one of the host's batches
            self._gather.max_items = status.max_batch_size

    def _pick(self) -> Link:
        connected = [link for link in self.links if link.connected]
        if not connected:
            raise WorkerUnavailable(f"{self._what} is not running (starting or restarting)")
        return min(connected, key=lambda link: self._in_flight[link.name])

    async def _attach(self, client: RpcClient) -> None:
        """A model worker's connection is set up: its status, and the slots it reads."""
        status = await MODEL.describe.call(client)
        assert self._slots is not None
        await self._slots.attach(client, status)
        self._status[client.name] = status

    async def start(self) -> None:
        await asyncio.gather(*(link.open() for link in self.links))
        # A link with no set-up call (Ray) is described now; its first call waits for a
        # replica, as Ray Serve starts the deployments together.
        for link in self.links:
            if link.connected and link.name not in self._status:
                self._remember(link, await MODEL.describe.call(link))

    async def connected_if_listening(self) -> None:
        await asyncio.gather(*(link.connected_if_listening() for link in self.links))

    async def stop(self, drain_timeout_s: float) -> None:
        # The requests are drained already (uvicorn); what is left is failed by the links.
        for link in self.links:
            await link.stop()
        if self._slots is not None:
            self._slots.close()

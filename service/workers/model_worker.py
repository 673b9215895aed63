"""The model worker: one process per device that owns the batchers and the backends.

HTTP workers connect over a Unix socket, attach their shared-memory pixel slots, and send
slot numbers (or JPEGs for the device to decode); this process batches them and answers
each with that image's outputs. What it answers is service.hosting.hosted.HostedModel's, as a
Ray replica's is. Each model version answers on its own socket, bound only once the version
is loaded and warmed up, so a connection means ready.

The first model worker hosts the model versions (service.versions.manager.ModelVersions):
it loads each beside the live one, has the index worker open its index, re-embeds it, and
answers the HTTP workers' management calls. Other devices' workers serve the version that
was live when they started.
"""

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from batching import BatchOutcome, Priority
from service.app import Components, ServiceParts
from service.errors import NotReady
from service.hosting.host import InProcessModel, ModelHost
from service.hosting.hosted import HostedModel
from service.model.model_io import ModelOutputs
from service.model.spec import ModelSpec
from service.settings import Settings
from service.transport.operations import (
    HostedModelOperations,
    IndexHostOperations,
    InspectorOperations,
    ModelOperations,
    VersionOperations,
    forwarded,
    handler_table,
)
from service.transport.remote_index import RemoteIndex
from service.transport.rpc import Handler, Peer, RpcClient, RpcServer
from service.transport.slots import SlotReader
from service.transport.sockets import index_host_socket, index_socket, model_socket, versions_socket
from service.versions.manager import ModelVersions
from service.versions.serving import Serving, open_serving
from service.workers.metrics import worker_registry
from service.workers.process import run_until_stopped


def model_handlers(host: ModelHost) -> dict[str, Handler]:
    """What a model worker answers for one loaded model: the hosted model's calls, the
    shared-memory slots, and explanations."""
    hosted = HostedModel(host)

    async def attach(peer: Peer, path: str, count: int, shape: tuple[int, int, int]) -> None:
        pixel_shape = host.runtime.preprocessor.pixel_shape
        if tuple(shape) != pixel_shape:
            raise ValueError(f"slots of {shape}; this model takes {pixel_shape}")
        reader = SlotReader(Path(path), count, shape)
        peer.state["slots"] = reader
        peer.on_close(reader.close)

    async def infer_slot(
        peer: Peer, slot: int, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        # Copied before anything else: the slot is the sender's again once this call answers,
        # while a flight it started may still run for others.
        pixels: np.ndarray = peer.state["slots"].copy(slot)
        return await hosted.infer(pixels, timeout_s, key, priority)

    return (
        forwarded(HostedModelOperations.ALL, hosted)
        | handler_table(
            (ModelOperations.attach, ModelOperations.infer_slot),
            {ModelOperations.attach: attach, ModelOperations.infer_slot: infer_slot},
        )
        | forwarded(InspectorOperations.ALL, host.inspector)
    )


class PublishedModel(InProcessModel):
    """A model host in this process that also answers the HTTP workers on its own socket,
    from its start (loaded and warm) to its stop."""

    def __init__(self, host: ModelHost, socket_path: Path) -> None:
        super().__init__(host)
        self._socket_path = socket_path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        await super().start()
        self._server = await RpcServer(model_handlers(self.host)).start(self._socket_path)

    async def stop(self, drain_timeout_s: float) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; calls in flight finish in the drain
        await super().stop(drain_timeout_s)


class IndexesThere:
    """The index worker as the first model worker sees it: it asks it to open each version's
    index, and again after the index worker restarts."""

    def __init__(self, sockets: Path) -> None:
        self._sockets = sockets
        self._opened: dict[str, tuple[str, ModelSpec]] = {}
        self._client = RpcClient(index_host_socket(sockets), "index", on_connect=self._reopen)

    async def start(self) -> None:
        self._client.start()
        await self._client.wait_connected()

    async def open(self, version: str, data_dir: Path, spec: ModelSpec) -> RemoteIndex:
        await self._client.wait_connected()
        await IndexHostOperations.open_index.call(self._client, version, str(data_dir), spec)
        self._opened[version] = (str(data_dir), spec)
        index = RemoteIndex(RpcClient(index_socket(self._sockets, version), f"index@{version}"))
        await index.start()
        return index

    async def close(self, version: str) -> None:
        self._opened.pop(version, None)
        with suppress(NotReady):  # stopping: the index worker has stopped first
            await IndexHostOperations.close_index.call(self._client, version)

    async def _reopen(self, client: RpcClient) -> None:
        for version, (data_dir, spec) in self._opened.items():
            await IndexHostOperations.open_index.call(client, version, data_dir, spec)

    async def stop(self) -> None:
        await self._client.stop()


def version_components(sockets: Path, indexes: IndexesThere) -> Components:
    """A version's parts in the first model worker: its model host, published on the
    version's socket, and its index, opened in the index worker."""

    @asynccontextmanager
    async def components(
        name: str, settings: Settings, registry: CollectorRegistry
    ) -> AsyncIterator[ServiceParts]:
        host = ModelHost(settings, registry, name)
        await host.load()
        index = await indexes.open(name, settings.data_dir, host.runtime.spec)
        try:
            model = PublishedModel(host, model_socket(sockets, 0, name))
            yield ServiceParts(model, index, host.inspector)
        finally:
            await index.close()
            await indexes.close(name)

    return components


async def serve_model(settings: Settings, sockets: Path, device: int) -> None:
    live, live_settings = ModelVersions.live_settings(settings)
    if device > 0:
        await _serve_one(live_settings, model_socket(sockets, device, live), live)
        return
    indexes = IndexesThere(sockets)
    await indexes.start()
    components = version_components(sockets, indexes)
    first = await open_serving(live, live_settings, components, exported=worker_registry())
    gc.freeze()  # the model and its runtime live as long as the process (see service.app)
    versions = ModelVersions(settings, first, components, on_switch=_nothing_to_do)
    versions.start()
    server = await RpcServer(forwarded(VersionOperations.ALL, versions)).start(
        versions_socket(sockets)
    )
    try:
        await run_until_stopped(f"model worker on {live_settings.device}")
    finally:
        server.close()
        await versions.close()
        await first.stack.aclose()
        await indexes.stop()


def _nothing_to_do(_: Serving) -> None:
    """The HTTP workers see the switch in the registry file the manager replaces."""


async def _serve_one(settings: Settings, socket_path: Path, version: str) -> None:
    host = ModelHost(settings, worker_registry(), version)
    await host.load()
    model = PublishedModel(host, socket_path)
    await model.start()
    gc.freeze()
    try:
        await run_until_stopped(f"model worker on {host.runtime.device}")
    finally:
        await model.stop(drain_timeout_s=settings.request_timeout_s)

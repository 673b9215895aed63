"""An HTTP worker: the full FastAPI app (parsing, validation, decoding, cache look-ups) with the
model and the index reached in their worker processes, and the model versions managed in the
first model worker."""

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from service.app import Components, ServiceParts, VersionHosting, create_app
from service.settings import Settings
from service.transport.remote_index import RemoteIndex
from service.transport.remote_inspector import RemoteInspector
from service.transport.remote_model import RemoteModel
from service.transport.remote_versions import RemoteVersions
from service.transport.rpc import RpcClient
from service.transport.sockets import index_socket, model_socket, versions_socket
from service.versions.serving import Serving
from service.workers.metrics import exposition_registry, worker_registry


def remote_components(sockets: Path, model_workers: int, slots: str) -> Components:
    """A version's parts in the worker processes: its model on every model worker that
    serves it, its index in the index worker. `slots`: this worker's pixel slots' prefix."""

    @asynccontextmanager
    async def components(
        name: str, settings: Settings, registry: CollectorRegistry
    ) -> AsyncIterator[ServiceParts]:
        # At first start this worker answers at once, 503 until the model worker has loaded
        # the model and listens, so it is never mistaken for a hung one; connections are
        # made in the background. A worker that replaces a dead one finds the others
        # listening: it connects first (the model, in pipeline.start), and only then takes
        # requests from the shared socket, so none is answered 503 for want of a connection.
        model_sockets = [model_socket(sockets, i, name) for i in range(model_workers)]
        model = RemoteModel.over_sockets(
            model_sockets, Path(f"{slots}-{name}.pixels"), settings.queue_size, registry
        )
        index = RemoteIndex(RpcClient(index_socket(sockets, name), f"index@{name}"))
        # Inspections run where the versions are: the first model worker.
        inspection = RpcClient(model_sockets[0], "inspector")
        await asyncio.gather(index.start(), inspection.open())
        try:
            yield ServiceParts(model, index, RemoteInspector(inspection))
        finally:
            await inspection.stop()
            await index.close()

    return components


def versions_there(sockets: Path) -> VersionHosting:
    """The model versions as the first model worker manages them."""

    def hosting(
        settings: Settings,
        first: Serving,
        parts: Components,
        on_switch: Callable[[Serving], None],
    ) -> RemoteVersions:
        manager = RpcClient(versions_socket(sockets), "versions")
        manager.start()
        return RemoteVersions(settings, first, parts, on_switch, manager)

    return hosting


def serve_http(
    settings: Settings, listen_fd: int, sockets: Path, model_workers: int, slots: str
) -> None:
    app = create_app(
        settings,
        remote_components(sockets, model_workers, slots),
        registry=worker_registry(),
        exposition=exposition_registry(supervisor_pid=os.getppid()),
        versions=versions_there(sockets),
    )
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go to ours (service.logs): one format, request ids
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=listen_fd)])

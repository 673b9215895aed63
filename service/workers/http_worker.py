"""An HTTP worker: the full FastAPI app (parsing, validation, decoding, cache look-ups) with the
model and the index reached in their worker processes."""

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from service.app import Components, ServiceParts, create_app
from service.settings import Settings
from service.workers.metrics import exposition_registry, worker_registry
from service.workers.remote_index import RemoteIndex
from service.workers.remote_inspector import RemoteInspector
from service.workers.remote_model import RemoteModel
from service.workers.rpc import RpcClient


def remote_components(model_sockets: list[Path], index_socket: Path, slots: Path) -> Components:
    @asynccontextmanager
    async def components(
        settings: Settings, registry: CollectorRegistry
    ) -> AsyncIterator[ServiceParts]:
        # At first start this worker answers at once, 503 until the model worker has loaded
        # the model and listens, so it is never mistaken for a hung one; connections are
        # made in the background. A worker that replaces a dead one finds the others
        # listening: it connects first (the model, in pipeline.start), and only then takes
        # requests from the shared socket, so none is answered 503 for want of a connection.
        model = RemoteModel(model_sockets, slots, settings.queue_size, registry)
        index = RemoteIndex(RpcClient(index_socket, "index"))
        # Inspections run where the model is: the first model worker.
        inspection = RpcClient(model_sockets[0], "inspector")
        await asyncio.gather(index.start(), inspection.open())
        try:
            yield ServiceParts(model, index, RemoteInspector(inspection))
        finally:
            await inspection.stop()
            await index.close()

    return components


def serve_http(
    settings: Settings, listen_fd: int, model_sockets: list[Path], index_socket: Path, slots: Path
) -> None:
    app = create_app(
        settings,
        remote_components(model_sockets, index_socket, slots),
        registry=worker_registry(),
        exposition=exposition_registry(supervisor_pid=os.getppid()),
    )
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers go to ours (service.logs): one format, request ids
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=listen_fd)])

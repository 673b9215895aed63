"""The index worker: the one owner of every model version's similarity index, which every
HTTP worker and the first model worker reach.

Writes go through a collection's single writer thread and are answered only once durable;
searches run concurrently on a reader pool (service.items.search_index.SearchIndex). The
first model worker, which hosts the model versions, asks this process to open a version's
index once that version's model is loaded (its identity decides which vectors the index
takes), and to close it when the version is removed. Each open index answers on its
version's own socket. This process never loads a model itself.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from service.items.search_index import SearchIndex, open_collection_for
from service.model.spec import ModelSpec
from service.settings import Settings
from service.transport.operations import IndexHostOperations, IndexOperations, forwarded
from service.transport.rpc import RpcServer
from service.transport.sockets import index_host_socket, index_socket
from service.workers.process import run_until_stopped

log = logging.getLogger(__name__)


@dataclass
class _OpenIndex:
    data_dir: str
    fingerprint: str
    index: SearchIndex
    server: asyncio.Server


class IndexHost:
    """Opens each version's index once, serves it on the version's socket, closes it."""

    def __init__(self, settings: Settings, sockets: Path) -> None:
        self._settings = settings
        self._sockets = sockets
        self._open: dict[str, _OpenIndex] = {}
        self._changing = asyncio.Lock()  # an open and a close of one version never overlap

    async def open_index(self, version: str, data_dir: str, spec: ModelSpec) -> None:
        async with self._changing:
            opened = self._open.get(version)
            if opened is not None:  # asked again by a restarted model worker
                if (opened.data_dir, opened.fingerprint) != (data_dir, spec.fingerprint):
                    raise ValueError(f"the index of version {version!r} is open for another model")
                return
            settings = self._settings.model_copy(update={"data_dir": Path(data_dir)})
            # ModelMismatch for an index of other vectors: the caller's configuration error.
            collection = await asyncio.to_thread(open_collection_for, settings, spec)
            index = SearchIndex(collection, search_threads=settings.decode_threads)
            handlers = forwarded(IndexOperations.ALL, index)
            server = await RpcServer(handlers).start(index_socket(self._sockets, version))
            self._open[version] = _OpenIndex(data_dir, spec.fingerprint, index, server)
            log.info("index of model version %s open (%s)", version, data_dir)

    async def close_index(self, version: str) -> None:
        async with self._changing:
            opened = self._open.pop(version, None)
            if opened is not None:
                await _close(opened)

    async def close(self) -> None:
        async with self._changing:
            for opened in self._open.values():
                await _close(opened)
            self._open.clear()


async def _close(opened: _OpenIndex) -> None:
    opened.server.close()  # no new connections; calls in flight finish first
    await opened.index.close()  # stops a background build; the snapshot and store are the index


async def serve_index(settings: Settings, sockets: Path) -> None:
    host = IndexHost(settings, sockets)
    handlers = forwarded(IndexHostOperations.ALL, host)
    server = await RpcServer(handlers).start(index_host_socket(sockets))
    try:
        await run_until_stopped("index worker")
    finally:
        server.close()
        await host.close()

"""The index worker: the one owner of the similarity index, which every HTTP worker reaches.

Writes go through the collection's single writer thread and are answered only once durable;
searches run concurrently on a reader pool (service.items.search_index.SearchIndex). The model's
identity (embedding size, fingerprint) comes from a model worker, so the index opens only
for the vectors that model produces and this process never loads the model itself.
"""

import asyncio
from pathlib import Path

from service.items.search_index import SearchIndex, open_collection_for
from service.model_client import ModelStatus
from service.settings import Settings
from service.workers.operations import IndexOperations, ModelOperations, forwarded
from service.workers.process import run_until_stopped
from service.workers.rpc import RpcClient, RpcServer


async def serve_index(settings: Settings, socket_path: Path, model_socket: Path) -> None:
    status = await _model_status(model_socket)
    collection = await asyncio.to_thread(open_collection_for, settings, status.spec)
    index = SearchIndex(collection, search_threads=settings.decode_threads)

    server = await RpcServer(forwarded(IndexOperations.ALL, index)).start(socket_path)
    try:
        await run_until_stopped("index worker")
    finally:
        server.close()
        await index.close()  # stops a background build; the snapshot and the store are the index


async def _model_status(model_socket: Path) -> ModelStatus:
    """Wait for the model worker (it may still be loading) and ask what it serves."""
    described: asyncio.Future[ModelStatus] = asyncio.get_running_loop().create_future()

    async def describe(client: RpcClient) -> None:
        if not described.done():
            described.set_result(await ModelOperations.describe.call(client))

    client = RpcClient(model_socket, "model", on_connect=describe)
    client.start()
    try:
        return await described
    finally:
        await client.stop()

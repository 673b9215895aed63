"""The HTTP worker's side of the index: every call goes to the index worker."""

from pathlib import Path
from typing import Any

import numpy as np

from index.collection import CollectionStats, SearchHit
from index.filters import Filter
from index.store import StoredItem
from service.workers.rpc import RpcClient


class RemoteIndex:
    """An ItemIndex whose one owner is the index worker process."""

    def __init__(self, socket: Path) -> None:
        self._client = RpcClient(socket, "index")

    @property
    def ready(self) -> bool:
        return self._client.connected

    async def start(self) -> None:
        self._client.start()
        await self._client.connected_if_listening()

    async def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        # Not cancellable: once sent, a write finishes, so its outcome is never hidden.
        created: bool = await self._client.call(
            "put", item_id, vector, metadata, image, cancellable=False
        )
        return created

    async def delete(self, item_id: str) -> bool:
        deleted: bool = await self._client.call("delete", item_id, cancellable=False)
        return deleted

    async def get(self, item_id: str) -> StoredItem | None:
        item: StoredItem | None = await self._client.call("get", item_id)
        return item

    async def image(self, item_id: str) -> bytes | None:
        data: bytes | None = await self._client.call("image", item_id)
        return data

    async def search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[SearchHit]:
        hits: list[SearchHit] = await self._client.call("search", vector, k, where)
        return hits

    async def similar(
        self, item_id: str, k: int, where: Filter | None = None
    ) -> list[SearchHit] | None:
        hits: list[SearchHit] | None = await self._client.call("similar", item_id, k, where)
        return hits

    async def stats(self) -> CollectionStats:
        stats: CollectionStats = await self._client.call("stats")
        return stats

    async def close(self) -> None:
        await self._client.stop()

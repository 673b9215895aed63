"""The client side of the index: every call goes to its one owner (the index worker, or the
Index deployment on Ray), over a Link."""

from typing import Any

import numpy as np

from index.collection import CollectionStats, SearchHit
from index.filters import Filter
from index.store import StoredItem
from service.transport.operations import IndexOperations as INDEX
from service.transport.operations import Link


class RemoteIndex:
    """An ItemIndex whose one owner is elsewhere: a worker process or a Ray replica."""

    def __init__(self, link: Link) -> None:
        self._client = link

    @property
    def ready(self) -> bool:
        return self._client.connected

    async def start(self) -> None:
        await self._client.open()

    async def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        # Not cancellable (see the declaration): once sent, a write finishes.
        return await INDEX.put.call(self._client, item_id, vector, metadata, image)

    async def delete(self, item_id: str) -> bool:
        return await INDEX.delete.call(self._client, item_id)

    async def get(self, item_id: str) -> StoredItem | None:
        return await INDEX.get.call(self._client, item_id)

    async def image(self, item_id: str) -> bytes | None:
        return await INDEX.image.call(self._client, item_id)

    async def search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[SearchHit]:
        return await INDEX.search.call(self._client, vector, k, where)

    async def similar(
        self, item_id: str, k: int, where: Filter | None = None
    ) -> list[SearchHit] | None:
        return await INDEX.similar.call(self._client, item_id, k, where)

    async def stats(self) -> CollectionStats:
        return await INDEX.stats.call(self._client)

    async def written_after(self, label: int, limit: int) -> list[tuple[int, str]]:
        return await INDEX.written_after.call(self._client, label, limit)

    async def max_label(self) -> int:
        return await INDEX.max_label.call(self._client)

    async def count(self) -> int:
        return await INDEX.count.call(self._client)

    async def ids(self, up_to: int | None = None) -> set[str]:
        return await INDEX.ids.call(self._client, up_to)

    async def connected_if_listening(self) -> None:
        await self._client.connected_if_listening()

    async def close(self) -> None:
        await self._client.stop()

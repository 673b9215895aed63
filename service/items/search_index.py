"""The collection as the async service sees it: one writer thread, a pool for searches."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np

from index.collection import Collection, CollectionStats, SearchHit
from index.filters import Filter
from index.milvus_collection import MilvusCollection
from index.store import StoredItem
from service import tracing
from service.model.spec import ModelSpec
from service.settings import Settings

T = TypeVar("T")


def open_collection(settings: Settings, *, d: int, fingerprint: str, model: str) -> Collection:
    """The collection in RESNET_SERVE_DATA_DIR/index; raises ModelMismatch or IndexInUse."""
    return Collection(
        settings.index_dir,
        d=d,
        fingerprint=fingerprint,
        model=model,
        factory=settings.index_factory,
        snapshot_every=settings.index_snapshot_every,
        nprobe=settings.index_nprobe,
        ef_search=settings.index_ef_search,
        target_ms=settings.index_target_ms,
        exact_up_to=settings.index_exact_up_to,
    )


# The item index's engine: FAISS files here, or a Milvus collection (INDEX_ENGINE).
Engine = Collection | MilvusCollection


def open_collection_for(settings: Settings, spec: ModelSpec) -> Engine:
    """The collection for vectors of this model, on the configured engine."""
    if settings.index_engine == "milvus":
        return open_milvus(settings, spec)
    return open_collection(
        settings, d=spec.embedding_dim, fingerprint=spec.fingerprint, model=spec.model_id
    )


def milvus_uri(settings: Settings) -> str:
    """RESNET_SERVE_MILVUS_URI, or Milvus Lite in DATA_DIR/index/milvus.db."""
    return settings.milvus_uri or str(settings.index_dir / "milvus.db")


def milvus_token(settings: Settings) -> str | None:
    token = settings.milvus_token
    return None if token is None else token.get_secret_value()


def open_milvus(settings: Settings, spec: ModelSpec) -> MilvusCollection:
    """The Milvus collection named by the settings; Milvus Lite under DATA_DIR by default."""
    if not settings.milvus_uri:
        settings.index_dir.mkdir(parents=True, exist_ok=True)
    return MilvusCollection(
        milvus_uri(settings),
        d=spec.embedding_dim,
        fingerprint=spec.fingerprint,
        model=spec.model_id,
        prefix=settings.milvus_collection_prefix,
        token=milvus_token(settings),
    )


class ItemIndex(Protocol):
    """What the routes need of the index: this process's SearchIndex, or a client of the
    index worker (service.transport.remote_index)."""

    @property
    def ready(self) -> bool:
        """True while calls can succeed (open here, or the index worker reachable)."""
        ...

    async def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        """Add or replace; durable when it returns. True if the id was new."""
        ...

    async def delete(self, item_id: str) -> bool: ...

    async def get(self, item_id: str) -> StoredItem | None: ...

    async def image(self, item_id: str) -> bytes | None: ...

    async def search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[SearchHit]:
        """The k nearest items (matching the metadata filter `where`, when given)."""
        ...

    async def similar(
        self, item_id: str, k: int, where: Filter | None = None
    ) -> list[SearchHit] | None: ...

    async def stats(self) -> CollectionStats: ...

    # What another model version's copy of the index needs to follow this one.

    async def written_after(self, label: int, limit: int) -> list[tuple[int, str]]:
        """(label, id) of up to `limit` items added or replaced after store label `label`,
        oldest first (every write takes a new label)."""
        ...

    async def max_label(self) -> int: ...

    async def count(self) -> int: ...

    async def ids(self, up_to: int | None = None) -> set[str]:
        """Every item's id, or those whose store label is at most `up_to`."""
        ...

    async def connected_if_listening(self) -> None:
        """Wait briefly for a host that listens but is not connected yet (it restarted, or
        a model version was published a moment ago), so a request does not fail for want of a
        connection; returns at once when connected, in-process, or nobody listens."""
        ...

    async def close(self) -> None: ...


class SearchIndex:
    """Keeps FAISS and SQLite work off the event loop, with the collection's one writer."""

    def __init__(self, collection: Engine, search_threads: int) -> None:
        self.collection = collection
        self.ready = True
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="index-writer")
        self._readers = ThreadPoolExecutor(search_threads, thread_name_prefix="index-search")

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        with tracing.span(f"index {fn.__name__}"):
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with tracing.span(f"index {fn.__name__}"):
            return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    async def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        # Shielded: once the write has started, a client disconnect must not hide its outcome.
        return await asyncio.shield(
            self._write(self.collection.put, item_id, vector, metadata, image)
        )

    async def delete(self, item_id: str) -> bool:
        return await asyncio.shield(self._write(self.collection.delete, item_id))

    async def get(self, item_id: str) -> StoredItem | None:
        return await self._read(self.collection.get, item_id)

    async def image(self, item_id: str) -> bytes | None:
        return await self._read(self.collection.image, item_id)

    async def search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[SearchHit]:
        return await self._read(self.collection.search, vector, k, None, where)

    async def similar(
        self, item_id: str, k: int, where: Filter | None = None
    ) -> list[SearchHit] | None:
        return await self._read(self.collection.similar, item_id, k, where)

    async def stats(self) -> CollectionStats:
        return await self._read(self.collection.stats)

    async def written_after(self, label: int, limit: int) -> list[tuple[int, str]]:
        return await self._read(self.collection.store.written_after, label, limit)

    async def max_label(self) -> int:
        return await self._read(self.collection.store.max_label)

    async def count(self) -> int:
        return await self._read(self.collection.store.count)

    async def ids(self, up_to: int | None = None) -> set[str]:
        return await self._read(self.collection.store.ids, up_to)

    async def connected_if_listening(self) -> None:
        return None  # in this process

    async def close(self) -> None:
        self._readers.shutdown(wait=True)
        await self._write(self.collection.close)
        self._writer.shutdown(wait=True)

"""A searchable collection: the durable store plus the FAISS index derived from it.

Threading contract: `put`, `delete`, `snapshot`, `rebuild` and `close` come from ONE writer
thread (the service gives the collection a single-thread executor); `search`, `similar`,
`get` and `stats` may come from any number of threads at once.
"""

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from index.rwlock import ReadWriteLock
from index.store import ItemStore, StoredItem, stored_form
from index.vector_index import FLAT, VectorIndex

log = logging.getLogger(__name__)

TRAIN_SAMPLE = 100_000


@dataclass(frozen=True)
class CollectionFiles:
    """Where a collection keeps its files: the one place that knows the disk layout."""

    directory: Path

    @property
    def lock(self) -> Path:
        return self.directory / "LOCK"

    @property
    def store(self) -> Path:
        return self.directory / "items.sqlite3"

    @property
    def snapshot_header(self) -> Path:
        return self.directory / "snapshot.json"


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CollectionStats:
    count: int
    d: int
    kind: str
    factory: str
    fingerprint: str
    model: str
    tombstones: int
    changes_since_snapshot: int
    index_bytes_per_item: int  # the FAISS index's memory per item (see VectorIndex)
    store_vector_bytes: int  # a vector in the store (float16)


class Collection:
    def __init__(
        self,
        directory: Path,
        *,
        d: int,
        fingerprint: str,
        model: str,
        factory: str = FLAT,
        snapshot_every: int = 1000,
        nprobe: int = 16,
        ef_search: int = 64,
    ) -> None:
        """Open (or create) the collection in `directory`.

        Raises IndexInUse when another process has it open, and ModelMismatch when it holds
        vectors of another model.
        """
        self.directory = directory
        self.fingerprint = fingerprint
        self.model = model
        self.factory = factory
        self._snapshot_every = snapshot_every
        self._search_params = {"nprobe": nprobe, "ef_search": ef_search}
        files = CollectionFiles(directory)
        self._header_path = files.snapshot_header
        directory.mkdir(parents=True, exist_ok=True)
        self._process_lock = hold_process_lock(files.lock)
        try:
            self.store = ItemStore(files.store, d, fingerprint, model)
        except BaseException:
            self._process_lock.close()
            raise
        self._lock = ReadWriteLock()
        self._index, snapshot_seq = self._load_snapshot() or (self._build(), self.store.last_seq())
        self._changes = self._catch_up(snapshot_seq)
        self._maybe_restructure()

    @property
    def d(self) -> int:
        return self.store.d

    # --- writes (one writer thread) ---------------------------------------------------------

    def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        """Add or replace; durable when it returns. True if the id was new."""
        vector = stored_form(vector)  # the index holds what a rebuild from the store would
        label, replaced = self.store.put(item_id, vector, metadata, image)
        with self._lock.writing():
            if replaced is not None:
                self._index.remove(np.array([replaced], np.int64))
            self._index.add(np.array([label], np.int64), vector.reshape(1, -1))
        self._after_write()
        return replaced is None

    def delete(self, item_id: str) -> bool:
        """Remove; durable when it returns. False if the id was unknown."""
        label = self.store.delete(item_id)
        if label is None:
            return False
        with self._lock.writing():
            self._index.remove(np.array([label], np.int64))
        self._after_write()
        return True

    def _after_write(self) -> None:
        self._changes += 1
        self._maybe_restructure()
        if self._changes >= self._snapshot_every:
            self.snapshot()

    def _maybe_restructure(self) -> None:
        if self._index.needs_training or self._index.needs_compaction():
            self.rebuild()

    def rebuild(self) -> None:
        """Build a fresh index from the store (training IVF, dropping tombstones), then swap.

        Searches keep using the old index while the new one is built.
        """
        fresh = self._build()
        with self._lock.writing():
            self._index = fresh
        self.snapshot()

    def _build(self) -> VectorIndex:
        index = VectorIndex(self.d, self.factory, **self._search_params)
        count = self.store.count()
        if index.is_ivf and count >= index.train_min:
            index.train(self._training_sample(count))
        for labels, vectors in self.store.vectors():
            index.add(labels, vectors)
        log.info("built %s index over %d vectors", index.kind, index.ntotal)
        return index

    def _training_sample(self, count: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        keep = min(1.0, TRAIN_SAMPLE / count)
        chunks = [vectors[rng.random(len(vectors)) < keep] for _, vectors in self.store.vectors()]
        return np.concatenate(chunks)

    def snapshot(self) -> None:
        """Write the index to disk atomically; the change log before it is then dropped.

        The FAISS file is written under a new name first; the small JSON header that names
        it is the commit point, replaced atomically. A crash at any moment leaves either the
        old snapshot or the new one.
        """
        seq = self.store.last_seq()  # the writer thread is here, so the index matches seq
        data_name = f"index-{seq}.faiss"
        with self._lock.reading():
            self._index.write(self.directory / data_name)
            tombstones = sorted(self._index.tombstone_labels())
        _fsync_file(self.directory / data_name)
        header = {
            "seq": seq,
            "d": self.d,
            "factory": self.factory,
            "fingerprint": self.fingerprint,
            "tombstones": tombstones,
            "data": data_name,
        }
        temporary = self._header_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(header))
        _fsync_file(temporary)
        os.replace(temporary, self._header_path)
        _fsync_directory(self.directory)
        for old in self.directory.glob("index-*.faiss"):
            if old.name != data_name:
                old.unlink()
        self.store.forget_changes(seq)
        self._changes = 0

    def close(self) -> None:
        """Snapshot if anything changed, then release the files. Safe to call twice."""
        if self._process_lock.closed:
            return
        if self._changes:
            self.snapshot()
        self.store.close()
        self._process_lock.close()  # releases the flock

    # --- reads (any thread) -----------------------------------------------------------------

    def get(self, item_id: str) -> StoredItem | None:
        return self.store.get(item_id)

    def image(self, item_id: str) -> bytes | None:
        """The image stored with an item (None: unknown id, or stored without its image)."""
        return self.store.image(item_id)

    def search(self, vector: np.ndarray, k: int, exclude: str | None = None) -> list[SearchHit]:
        with self._lock.reading():
            D, I = self._index.search(vector.reshape(1, -1), k + (exclude is not None))
        found = self.store.by_labels([int(i) for i in I[0] if i >= 0])
        hits = [
            SearchHit(found[int(i)].id, float(score), found[int(i)].metadata)
            for score, i in zip(D[0], I[0], strict=True)
            # A label can vanish between search and lookup when a delete lands in between.
            if int(i) in found and found[int(i)].id != exclude
        ]
        return hits[:k]

    def similar(self, item_id: str, k: int) -> list[SearchHit] | None:
        """Nearest items to a stored item (itself excluded); None if the id is unknown."""
        vector = self.store.vector(item_id)
        return None if vector is None else self.search(vector, k, exclude=item_id)

    def stats(self) -> CollectionStats:
        with self._lock.reading():
            kind, tombstones, count = self._index.kind, self._index.tombstones, self._index.ntotal
            per_item = self._index.bytes_per_item
        return CollectionStats(
            count=count,
            d=self.d,
            kind=kind,
            factory=self.factory,
            fingerprint=self.fingerprint,
            model=self.model,
            tombstones=tombstones,
            changes_since_snapshot=self._changes,
            index_bytes_per_item=per_item,
            store_vector_bytes=2 * self.d,
        )

    # --- start-up ---------------------------------------------------------------------------

    def _load_snapshot(self) -> tuple[VectorIndex, int] | None:
        if not self._header_path.exists():
            return None
        try:
            header = json.loads(self._header_path.read_text())
            wanted = {"d": self.d, "factory": self.factory, "fingerprint": self.fingerprint}
            if {key: header.get(key) for key in wanted} != wanted:
                log.info("index snapshot is for other settings %s; rebuilding", header)
                return None
            index = VectorIndex.read(
                self.directory / header["data"],
                self.d,
                self.factory,
                set(header["tombstones"]),
                **self._search_params,
            )
        except (ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
            # FAISS raises RuntimeError for a damaged file; json raises ValueError.
            log.warning("index snapshot in %s unreadable (%s); rebuilding", self.directory, exc)
            return None
        return index, int(header["seq"])

    def _catch_up(self, seq: int) -> int:
        """Apply changes logged after the snapshot; returns how many there were."""
        changes = list(self.store.changes_since(seq))
        added_after = {change.label for change in changes if change.op == "add"}
        for change in changes:
            if change.op == "add" and change.vector is not None:
                self._index.add(np.array([change.label], np.int64), change.vector.reshape(1, -1))
            elif change.op == "del" and change.label not in added_after:
                # Only labels the snapshot holds; later adds that were deleted were skipped.
                self._index.remove(np.array([change.label], np.int64))
        if changes:
            log.info("index caught up on %d changes since its snapshot", len(changes))
        return len(changes)


class IndexInUse(RuntimeError):
    """Another process has this collection open; two writers would diverge."""


def hold_process_lock(path: Path) -> IO[str]:
    """An exclusive flock for this process's lifetime (released by the OS even on kill -9)."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise IndexInUse(
            f"the index in {path.parent} is open in {holder}; stop it first (the index has "
            "one writer), or add items over HTTP"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

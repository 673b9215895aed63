"""Durable item store: SQLite in WAL mode, the source of truth the FAISS index derives from.

Each write commits with synchronous=FULL before it is acknowledged, so an acknowledged add
or delete survives kill -9 and power loss. Labels only grow (AUTOINCREMENT, never reused), so
an index snapshot that holds every label up to W catches up by adding the labels above W;
deletes need no log, since the live labels are read from the items themselves.

Vectors are stored as float16: half the bytes of float32, and for unit vectors the cosine
scores move by less than 1e-3. Stores written before keep their float32 vectors readable
(told apart by length); every vector written now is float16. A dense copy of them beside the
database (index.vector_rows) serves the scattered reads of exact scans and re-ranking.
"""

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.vector_rows import VectorRows

log = logging.getLogger(__name__)

_LOOKUP_CHUNK = 10_000  # labels in one IN (...): below SQLite's host parameter limit
_MMAP_BYTES = 1 << 40  # address space only: the pages are the file's, shared with the cache
_ROWS_STATE = "vector_rows"  # meta key: "clean SIZE MTIME_NS" of the rows file at a clean close
_ROWS_REBUILD_CHUNK = 2_000  # rows copied per turn of the lock while the rows file is rebuilt

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY AUTOINCREMENT,  -- the FAISS id; never reused
    id TEXT NOT NULL UNIQUE,
    vector BLOB NOT NULL,
    metadata TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, data BLOB NOT NULL);
DROP TABLE IF EXISTS changes;  -- the change log of earlier releases; labels replace it
"""


class ModelMismatch(RuntimeError):
    """The store holds vectors of another model; mixing them would give nonsense results."""


@dataclass(frozen=True)
class StoredItem:
    id: str
    label: int
    metadata: dict[str, Any]
    added_at: float


def stored_form(vector: np.ndarray) -> np.ndarray:
    """The vector as the store keeps it (float16), back in float32: what an index built from
    the store holds, so an index fed at write time holds exactly the same."""
    return np.asarray(vector, dtype=np.float16).astype(np.float32)


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float16).tobytes()


def _decode(blob: bytes, d: int) -> np.ndarray:
    """float16 (2 bytes a dimension), or float32 from a store written before float16."""
    dtype = np.float16 if len(blob) == 2 * d else np.float32
    return np.frombuffer(blob, dtype).astype(np.float32)


class ItemStore:
    """Items (id, vector, metadata, optional source image) and the change log.

    One connection guarded by a lock: SQLite point lookups take microseconds, and a single
    connection keeps write ordering trivially correct.
    """

    def __init__(
        self, path: Path, d: int, fingerprint: str, model: str, *, adopt_model: bool = False
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.d = d
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # Reads through a memory map: re-ranking and exact filtered scans read thousands of
        # scattered vectors a query, and a read() per page cost more than the scoring.
        self._db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        self._db.executescript(_SCHEMA)
        self.stored_model = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not adopt_model:
            try:
                self._refuse_other_model(fingerprint, model)
            except ModelMismatch:
                self._db.close()
                raise
            self.set_model(fingerprint, model)
        self._rows: VectorRows | None = None  # set once the rows file matches the store
        self._rows_building: VectorRows | None = None
        self._closing = threading.Event()
        self._rows_builder: threading.Thread | None = None
        self._rows_ready = threading.Event()
        self._open_rows()

    def _open_rows(self) -> None:
        """Trust the rows file if the store recorded it clean at its last close (and it is
        that file still); else rebuild it from the store in the background."""
        path = self.path.with_suffix(".vectors")
        trusted = path.exists() and self.stored_model.get(_ROWS_STATE) == _clean_mark(path)
        rows = VectorRows(path, 2 * self.d, fresh=not trusted)
        self._set_meta(_ROWS_STATE, "dirty")  # written from now on without a sync
        if trusted and rows.capacity > self.max_label():
            self._rows = rows
            self._rows_ready.set()
            return
        self._rows_building = rows
        self._rows_builder = threading.Thread(
            target=self._rebuild_rows, args=(rows,), name="vector-rows", daemon=True
        )
        self._rows_builder.start()

    def _rebuild_rows(self, rows: VectorRows) -> None:
        """Copy every stored vector into a fresh rows file, a chunk per turn of the lock so
        a write lands either before a chunk is read or after it is written."""
        reader = sqlite3.connect(self.path, check_same_thread=False)
        after = 0
        try:
            while not self._closing.is_set():
                with self._lock:
                    batch = reader.execute(
                        "SELECT label, vector FROM items WHERE label > ? ORDER BY label LIMIT ?",
                        (after, _ROWS_REBUILD_CHUNK),
                    ).fetchall()
                    if not batch:
                        rows.reserve(self.max_label_locked() + 1)
                        self._rows, self._rows_building = rows, None
                        self._rows_ready.set()
                        log.info("vector rows rebuilt from the store: %s", rows.path)
                        return
                    labels = np.array([row[0] for row in batch], dtype=np.int64)
                    rows.write(labels, self._codes([row[1] for row in batch]))
                after = int(labels[-1])
        finally:
            reader.close()

    def wait_for_vector_rows(self, timeout: float | None = None) -> bool:
        """Whether the rows file serves reads (waiting up to `timeout` for its rebuild)."""
        return self._rows_ready.wait(timeout)

    def _write_rows(self, labels: np.ndarray, codes: np.ndarray) -> None:
        """Called with the lock held, after the commit."""
        rows = self._rows or self._rows_building
        if rows is not None:
            rows.write(labels, codes)

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock, self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @staticmethod
    def recorded_model(path: Path) -> dict[str, str]:
        """The model, fingerprint and dimension a store's vectors were made with, and
        `count`, how many items it holds."""
        db = sqlite3.connect(path)
        try:
            recorded = dict(db.execute("SELECT key, value FROM meta").fetchall())
            recorded["count"] = str(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
            return recorded
        finally:
            db.close()

    def _refuse_other_model(self, fingerprint: str, model: str) -> None:
        stored = self.stored_model
        if stored and self.count() and stored.get("fingerprint") != fingerprint:
            raise ModelMismatch(
                f"the index at {self.path} holds {self.count()} vectors of model "
                f"{stored.get('model')} (fingerprint {stored.get('fingerprint')}), but the "
                f"service runs {model} (fingerprint {fingerprint}). Re-embed the stored images "
                "with `resnet-serve index reindex`, or point RESNET_SERVE_DATA_DIR elsewhere."
            )

    def set_model(self, fingerprint: str, model: str) -> None:
        """Record which model the stored vectors come from."""
        meta = {"fingerprint": fingerprint, "model": model, "d": str(self.d)}
        with self._lock, self._transaction():
            for key, value in meta.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def replace_vector(self, item_id: str, vector: np.ndarray) -> None:
        """Overwrite one item's vector in place (re-embedding); its label stays."""
        blob = _encode(vector)
        with self._lock:
            with self._transaction():
                row = self._db.execute(
                    "UPDATE items SET vector = ? WHERE id = ? RETURNING label", (blob, item_id)
                ).fetchone()
            if row is not None:
                self._write_rows(np.array([row[0]]), self._codes([blob]))

    def ids_without_image(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM items WHERE id NOT IN (SELECT id FROM images) ORDER BY id"
            ).fetchall()
        return [row[0] for row in rows]

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)

    def close(self) -> None:
        self._closing.set()
        if self._rows_builder is not None:
            self._rows_builder.join()
        with self._lock:
            if self._rows is not None:  # complete: synced, then trusted at the next open
                self._rows.sync()
                self._rows.close()
                with self._transaction():
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (_ROWS_STATE, _clean_mark(self._rows.path)),
                    )
            elif self._rows_building is not None:
                self._rows_building.close()
            self._db.close()

    def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> tuple[int, int | None]:
        """Insert or replace; returns (new label, replaced label or None). Durable on return."""
        blob = _encode(vector)
        with self._lock:
            with self._transaction():
                old = self._db.execute(
                    "SELECT label FROM items WHERE id = ?", (item_id,)
                ).fetchone()
                if old:
                    self._db.execute("DELETE FROM items WHERE label = ?", (old[0],))
                cursor = self._db.execute(
                    "INSERT INTO items (id, vector, metadata, added_at) VALUES (?, ?, ?, ?)",
                    (item_id, blob, json.dumps(metadata), time.time()),
                )
                label = int(cursor.lastrowid or 0)
                if image is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO images VALUES (?, ?)", (item_id, image)
                    )
            self._write_rows(np.array([label]), self._codes([blob]))
        return label, (int(old[0]) if old else None)

    def add_many(self, items: list[tuple[str, np.ndarray, str]]) -> None:
        """Insert new items (id, unit vector, metadata JSON) in one transaction; durable on
        return. The ids must not exist yet (bulk import checks with `existing`)."""
        now = time.time()
        rows = [(item_id, _encode(vector), metadata, now) for item_id, vector, metadata in items]
        with self._lock:
            with self._transaction():
                first = self.max_label_locked() + 1  # AUTOINCREMENT: one writer, consecutive
                self._db.executemany(
                    "INSERT INTO items (id, vector, metadata, added_at) VALUES (?, ?, ?, ?)", rows
                )
            labels = np.arange(first, first + len(rows), dtype=np.int64)
            self._write_rows(labels, self._codes([row[1] for row in rows]))

    def existing(self, ids: list[str]) -> set[str]:
        """Which of these ids are stored."""
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)
                found.update(row[0] for row in rows)
        return found

    def count_above(self, label: int) -> int:
        """How many live items have a label above this one (added after a snapshot)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM items WHERE label > ?", (label,))
            return int(row.fetchone()[0])

    def delete(self, item_id: str) -> int | None:
        """Remove an item; returns its label, or None if it did not exist. Durable on return."""
        with self._lock, self._transaction():
            row = self._db.execute("SELECT label FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                return None
            self._db.execute("DELETE FROM items WHERE label = ?", (row[0],))
            self._db.execute("DELETE FROM images WHERE id = ?", (item_id,))
        return int(row[0])

    def get(self, item_id: str) -> StoredItem | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, label, metadata, added_at FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        return _item(row) if row else None

    def vector(self, item_id: str) -> np.ndarray | None:
        with self._lock:
            row = self._db.execute("SELECT vector FROM items WHERE id = ?", (item_id,)).fetchone()
        return _decode(row[0], self.d) if row else None

    def by_labels(self, labels: list[int]) -> dict[int, StoredItem]:
        if not labels:
            return {}
        marks = ",".join("?" * len(labels))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, label, metadata, added_at FROM items WHERE label IN ({marks})", labels
            ).fetchall()
        return {int(row[1]): _item(row) for row in rows}

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def max_label(self) -> int:
        """The highest label ever given (0 for none); every label above it is still to come."""
        with self._lock:
            return self.max_label_locked()

    def max_label_locked(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return int(row[0]) if row else 0

    def vectors(
        self, *, after: int = 0, upto: int | None = None, chunk: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every (labels, vectors) with after < label <= upto, in label order, a chunk at a
        time. Reads on a connection of its own, so a long read never holds up a write."""
        last = upto if upto is not None else 2**62
        reader = sqlite3.connect(self.path, check_same_thread=False)
        try:
            while True:
                rows = reader.execute(
                    "SELECT label, vector FROM items WHERE label > ? AND label <= ? "
                    "ORDER BY label LIMIT ?",
                    (after, last, chunk),
                ).fetchall()
                if not rows:
                    return
                labels = np.array([row[0] for row in rows], dtype=np.int64)
                yield labels, self._matrix([row[1] for row in rows])
                after = int(labels[-1])
        finally:
            reader.close()

    def vectors_of(self, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(labels found, their vectors), for re-ranking candidates exactly."""
        if not labels:
            return np.zeros(0, np.int64), np.zeros((0, self.d), np.float32)
        marks = ",".join("?" * len(labels))
        with self._lock:
            rows = self._db.execute(
                f"SELECT label, vector FROM items WHERE label IN ({marks})", labels
            ).fetchall()
        found = np.array([row[0] for row in rows], dtype=np.int64)
        return found, self._matrix([row[1] for row in rows])

    def encoded_vectors_of(self, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(labels found, their vectors as float16 bytes: uint8, 2*d a row), for scoring in
        FAISS without a float32 copy (numpy's float16 conversion costs more than the read).
        Any number of labels. Read from the rows file once it is complete: there a label
        deleted meanwhile is still found (with its last vector), so a caller resolves the
        items of what it ranks (`by_labels`) and drops the missing, as search does."""
        copy = self._rows
        if copy is not None:
            wanted = np.asarray(labels, dtype=np.int64)
            return wanted, copy.read(wanted)
        found: list[np.ndarray] = []
        codes: list[np.ndarray] = []
        for start in range(0, len(labels), _LOOKUP_CHUNK):
            chunk = labels[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT label, vector FROM items WHERE label IN ({marks})", chunk
                ).fetchall()
            found.append(np.array([row[0] for row in rows], dtype=np.int64))
            codes.append(self._codes([blob for _, blob in rows]))
        if len(found) == 1:
            return found[0], codes[0]
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, 2 * self.d), np.uint8)
        return np.concatenate(found), np.concatenate(codes)

    def labels_and_metadata(self, chunk: int = 50_000) -> Iterator[list[tuple[int, str]]]:
        """Every live (label, metadata JSON), a chunk at a time (start-up)."""
        after = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT label, metadata FROM items WHERE label > ? ORDER BY label LIMIT ?",
                    (after, chunk),
                ).fetchall()
            if not rows:
                return
            yield rows
            after = int(rows[-1][0])

    def written_after(self, label: int, limit: int) -> list[tuple[int, str]]:
        """(label, id) of the items added or replaced after `label`, oldest first: what a
        copy made up to `label` is missing (re-embedding for another model)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT label, id FROM items WHERE label > ? ORDER BY label LIMIT ?",
                (label, limit),
            ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    def ids(self, up_to: int | None = None) -> set[str]:
        """Every item's id, or only those whose label is at most `up_to`."""
        with self._lock:
            if up_to is None:
                rows = self._db.execute("SELECT id FROM items")
            else:
                rows = self._db.execute("SELECT id FROM items WHERE label <= ?", (up_to,))
            return {row[0] for row in rows}

    def _codes(self, blobs: list[bytes]) -> np.ndarray:
        """Stored vectors as float16 bytes (uint8, 2*d a row). A store from before float16
        keeps float32 rows: they are given as float16 like the rest."""
        encoded = [
            blob if len(blob) == 2 * self.d else _encode(_decode(blob, self.d)) for blob in blobs
        ]
        return np.frombuffer(b"".join(encoded), np.uint8).reshape(len(blobs), 2 * self.d)

    def _matrix(self, blobs: list[bytes]) -> np.ndarray:
        if all(len(blob) == 2 * self.d for blob in blobs):  # one copy for the chunk
            joined = np.frombuffer(b"".join(blobs), np.float16)
            return joined.reshape(len(blobs), self.d).astype(np.float32)
        # a store from before float16, possibly partly rewritten since
        return np.stack([_decode(blob, self.d) for blob in blobs])

    def image_ids(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT id FROM images ORDER BY id")]

    def image(self, item_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM images WHERE id = ?", (item_id,)).fetchone()
        return bytes(row[0]) if row else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def _clean_mark(path: Path) -> str:
    """What identifies the rows file as it was left at a clean close."""
    stat = os.stat(path)
    return f"clean {stat.st_size} {stat.st_mtime_ns}"


def _item(row: tuple[Any, ...]) -> StoredItem:
    return StoredItem(id=row[0], label=int(row[1]), metadata=json.loads(row[2]), added_at=row[3])

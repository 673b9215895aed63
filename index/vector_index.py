"""FAISS inner-product index over unit vectors (cosine), keyed by int64 labels.

Not thread-safe by itself: the Collection serialises writes against searches.
"""

from pathlib import Path

import faiss
import numpy as np

FLAT = "Flat"
_ID_BYTES = 8  # an int64 label
_REVERSE_MAP_BYTES = 32  # IDMap2's label -> position hash map, per entry (libstdc++)


class VectorIndex:
    """Exact search by default; HNSW and IVF through a FAISS factory string.

    IVF must be trained: until `train_min` vectors exist it searches exactly (a flat index);
    then `needs_training` turns true and the owner builds a new index: `train` on a sample,
    `add` every vector, and swap it in. HNSW cannot remove vectors, so removals there are
    tombstones filtered out of results until the owner rebuilds.
    """

    def __init__(
        self, d: int, factory: str = FLAT, *, nprobe: int = 16, ef_search: int = 64
    ) -> None:
        self.d = d
        self.factory = factory
        self.nprobe = nprobe  # IVF lists visited per query
        self.ef_search = ef_search  # HNSW candidate list size
        self._target = _make(d, factory)
        self.is_ivf = faiss.try_extract_index_ivf(self._target) is not None
        self.train_min = _ivf_train_min(self._target) if self.is_ivf else 0
        # An untrained IVF serves from an exact index until it has enough data to train.
        self._index = _make(d, FLAT) if self.is_ivf else self._target
        self._removable = "HNSW" not in factory
        self._tombstones: set[int] = set()

    @property
    def kind(self) -> str:
        if self.is_ivf and self._index is not self._target:
            return f"{self.factory} (untrained: exact until {self.train_min} vectors)"
        return self.factory

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    @property
    def bytes_per_item(self) -> int:
        """Memory an item costs in this index, from its structure: its code (the vector as the
        index keeps it), its id, and for HNSW its graph links."""
        index = self._index
        ids = 0
        if isinstance(index, faiss.IndexIDMap2):
            index = faiss.downcast_index(index.index)
            ids = _ID_BYTES + _REVERSE_MAP_BYTES
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            m = int(hnsw.hnsw.nb_neighbors(1))  # type: ignore[attr-defined]  # stub lags
            # 2M neighbours on the base level, M on each upper one (reached with chance 1/M
            # per level), and the node's level and offset.
            links = 4 * (2 * m + m / (m - 1)) + 4 + 8
            return ids + int(faiss.downcast_index(hnsw.storage).sa_code_size()) + round(links)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            return int(ivf.code_size) + _ID_BYTES  # each inverted list stores code and id
        return ids + int(index.sa_code_size())

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def needs_training(self) -> bool:
        return self.is_ivf and self._index is not self._target and self.ntotal >= self.train_min

    def train(self, sample: np.ndarray) -> None:
        """Train an empty IVF index on a sample of the collection; it serves IVF from now on."""
        if self._index.ntotal:
            raise ValueError("train a new, empty index, then add the vectors")
        self._target.train(np.ascontiguousarray(sample, dtype=np.float32))
        self._index = self._target

    def add(self, labels: np.ndarray, xb: np.ndarray) -> None:
        self._index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), labels)

    def remove(self, labels: np.ndarray) -> None:
        if self._removable:
            self._index.remove_ids(labels)  # type: ignore[arg-type]  # faiss's stub lags its API
        else:
            self._tombstones.update(int(label) for label in labels)

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """D (scores, higher is closer) and I (labels, -1 for none), each (n, k)."""
        k_search = min(k + len(self._tombstones), int(self._index.ntotal))
        if k_search == 0:
            return np.zeros((len(xq), k), np.float32), np.full((len(xq), k), -1, np.int64)
        params: faiss.SearchParameters | None = None
        if _hnsw_of(self._index) is not None:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k_search))  # type: ignore[attr-defined]
        elif faiss.try_extract_index_ivf(self._index) is not None:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)  # type: ignore[call-arg]
        D, I = self._index.search(
            np.ascontiguousarray(xq, dtype=np.float32), k_search, params=params
        )
        if self._tombstones:
            D, I = _drop(D, I, self._tombstones, k)
        return D[:, :k], I[:, :k]

    def write(self, path: Path) -> None:
        """Write the FAISS index to a file (streamed: no in-memory copy)."""
        faiss.write_index(self._index, str(path))

    @classmethod
    def read(
        cls, path: Path, d: int, factory: str, tombstones: set[int], **search: int
    ) -> "VectorIndex":
        index = cls(d, factory, **search)
        loaded = faiss.read_index(str(path))
        if loaded.d != d:
            raise ValueError(f"snapshot has dimension {loaded.d}, expected {d}")
        index._index = loaded
        if not index.is_ivf or faiss.try_extract_index_ivf(loaded) is not None:
            index._target = loaded
        index._tombstones = set(tombstones)
        return index

    def tombstone_labels(self) -> set[int]:
        return set(self._tombstones)

    def needs_compaction(self) -> bool:
        """Tombstones cost search time and memory; rebuild once they are a tenth of the index."""
        return len(self._tombstones) > max(100, int(self._index.ntotal) // 10)


def _make(d: int, factory: str) -> faiss.Index:
    # IVF indexes carry their own ids; the others need an id map.
    probe = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if faiss.try_extract_index_ivf(probe) is not None:
        return probe
    return faiss.index_factory(d, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)


def _ivf_train_min(index: faiss.Index) -> int:
    # FAISS warns below 39 training points per centroid.
    return 39 * int(faiss.extract_index_ivf(index).nlist)


def _hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _drop(D: np.ndarray, I: np.ndarray, dropped: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    keep_D = np.zeros((len(D), k), np.float32)
    keep_I = np.full((len(I), k), -1, np.int64)
    for row in range(len(I)):
        kept = [
            (d, i) for d, i in zip(D[row], I[row], strict=True) if i >= 0 and int(i) not in dropped
        ]
        for col, (d, i) in enumerate(kept[:k]):
            keep_D[row, col], keep_I[row, col] = d, i
    return keep_D, keep_I

"""One FAISS index over unit vectors, keyed by int64 labels.

Exact indexes score by inner product (cosine). Approximate ones are built on L2, which ranks
unit vectors as cosine does and trains balanced IVF lists; their scores are converted back
to cosine (1 - L2/2), and the collection re-ranks their candidates exactly anyway.

Not thread-safe by itself: the collection never adds to an index that is being searched.
"""

from pathlib import Path

import faiss
import numpy as np

from index.halves import in_two_halves
from index.live_labels import selector

FLAT = "Flat"
# Codes from which one query's scan of its inverted lists is done in two halves at once: a
# broad filter probes every list (1M codes, 14.5 ms on one core of the 2-core machine, 7.7 ms
# split); below this a scan is too short to pay for waking the helper thread.
_SPLIT_FROM_CODES = 100_000
_ID_BYTES = 8  # an int64 label
_ID_MAP_BYTES = 8  # IDMap's position -> label array


class VectorIndex:
    def __init__(self, index: faiss.Index, *, ef_search: int = 64) -> None:
        self._index = index
        self.ef_search = ef_search  # HNSW candidate list size
        self.exact = _is_exact(index)

    @classmethod
    def create(cls, d: int, factory: str = FLAT, *, ef_search: int = 64) -> "VectorIndex":
        if factory == FLAT:
            return cls(faiss.IndexIDMap(faiss.IndexFlatIP(d)), ef_search=ef_search)
        probe = faiss.index_factory(d, factory, faiss.METRIC_L2)
        if faiss.try_extract_index_ivf(probe) is None:  # IVF carries ids; the others need a map
            probe = faiss.IndexIDMap(probe)
        return cls(probe, ef_search=ef_search)

    @property
    def d(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def nlist(self) -> int:
        ivf = faiss.try_extract_index_ivf(self._index)
        return 0 if ivf is None else int(ivf.nlist)

    @property
    def can_remove(self) -> bool:
        return self._hnsw() is None  # HNSW graphs cannot drop a node

    @property
    def needs_training(self) -> bool:
        return not self._index.is_trained

    @property
    def bytes_per_item(self) -> int:
        """Memory an item costs in this index, from its structure: its code (the vector as the
        index keeps it), its id, and for HNSW its graph links."""
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            return int(ivf.code_size) + _ID_BYTES  # each inverted list stores code and id
        inner = faiss.downcast_index(self._index.index)  # type: ignore[attr-defined]  # IDMap
        if isinstance(inner, faiss.IndexHNSW):
            m = int(inner.hnsw.nb_neighbors(1))  # type: ignore[attr-defined]  # stub lags
            # 2M neighbours on the base level, M on each upper one (reached with chance 1/M
            # per level), and the node's level and offset.
            links = 4 * (2 * m + m / (m - 1)) + 4 + 8
            code = int(faiss.downcast_index(inner.storage).sa_code_size())
            return _ID_MAP_BYTES + code + round(links)
        return _ID_MAP_BYTES + int(inner.sa_code_size())

    def train(self, sample: np.ndarray) -> None:
        self._index.train(np.ascontiguousarray(sample, dtype=np.float32))

    def add(self, labels: np.ndarray, xb: np.ndarray) -> None:
        self._index.add_with_ids(
            np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(labels, np.int64)
        )

    def remove(self, dead: np.ndarray) -> int:
        """Drop the labels whose bit is set in `dead` (packed bits); how many were dropped."""
        return int(self._index.remove_ids(selector(dead)))

    def copy(self) -> "VectorIndex":
        return VectorIndex(faiss.clone_index(self._index), ef_search=self.ef_search)

    def empty_like(self) -> "VectorIndex":
        """The same structure and training, without vectors (for items added later)."""
        empty = faiss.clone_index(self._index)
        empty.reset()
        return VectorIndex(empty, ef_search=self.ef_search)

    def search(
        self, xq: np.ndarray, k: int, *, live: np.ndarray | None = None, nprobe: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores (higher is closer) and labels (-1 for none), each (n, k).

        `live`: packed bits of the labels that may be returned (kept alive by the caller).
        """
        k = min(k, self.ntotal)
        if k == 0:
            return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
        chosen = None if live is None else selector(live)
        nprobe = max(1, nprobe)
        ivf = self._index
        # Only an index that is itself the IVF: one behind a transform needs its query
        # transformed first.
        if (
            isinstance(ivf, faiss.IndexIVF)
            and len(xq) == 1
            and nprobe * self.ntotal >= _SPLIT_FROM_CODES * max(1, int(ivf.nlist))
        ):
            return _as_cosine(*_search_lists_in_halves(ivf, xq, k, chosen, nprobe))
        params: faiss.SearchParameters
        if faiss.try_extract_index_ivf(self._index) is not None:
            params = faiss.SearchParametersIVF(sel=chosen, nprobe=nprobe)  # type: ignore[call-arg]
        elif self._hnsw() is not None:
            params = faiss.SearchParametersHNSW(sel=chosen, efSearch=max(self.ef_search, k))  # type: ignore[attr-defined]
        else:
            params = faiss.SearchParameters(sel=chosen)  # type: ignore[call-arg]
        D, I = self._index.search(np.ascontiguousarray(xq, dtype=np.float32), k, params=params)
        return (D, I) if self.exact else _as_cosine(D, I)

    def write(self, path: Path) -> None:
        """Write the FAISS index to a file (streamed: no in-memory copy)."""
        faiss.write_index(self._index, str(path))

    @classmethod
    def read(cls, path: Path, d: int, *, ef_search: int = 64) -> "VectorIndex":
        loaded = faiss.read_index(str(path))
        if loaded.d != d:
            raise ValueError(f"snapshot has dimension {loaded.d}, expected {d}")
        return cls(loaded, ef_search=ef_search)

    def _hnsw(self) -> faiss.IndexHNSW | None:
        inner = self._index
        if isinstance(inner, faiss.IndexIDMap):
            inner = faiss.downcast_index(inner.index)
        return inner if isinstance(inner, faiss.IndexHNSW) else None


def _search_lists_in_halves(
    ivf: faiss.IndexIVF, xq: np.ndarray, k: int, chosen: faiss.IDSelector | None, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """One query's squared L2 distances and labels, its probed lists scanned in two halves at
    once (alternate lists of the nearest first: halves of about equal size)."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nprobe = min(nprobe, int(ivf.nlist))
    if nprobe == ivf.nlist and not ivf.by_residual:
        # Every list, and codes not relative to their list's centroid: no coarse search.
        assign = np.arange(nprobe, dtype=np.int64)[None]
        coarse = np.zeros((1, nprobe), np.float32)
    else:
        coarse, assign = ivf.quantizer.search(xq, nprobe)

    def scan(lists: slice) -> tuple[np.ndarray, np.ndarray]:
        part, part_coarse = (
            np.ascontiguousarray(assign[:, lists]),
            np.ascontiguousarray(coarse[:, lists]),
        )
        params = faiss.SearchParametersIVF(sel=chosen, nprobe=part.shape[1])  # type: ignore[call-arg]
        D = np.empty((1, k), np.float32)
        I = np.empty((1, k), np.int64)
        # The C++ call itself: FAISS's Python wrapper of it refuses search parameters,
        # and the selector (a filter, the live labels) must reach the scan.
        ivf.search_preassigned_c(  # type: ignore[attr-defined]  # the stub knows the wrapper
            1,
            faiss.swig_ptr(xq),
            k,
            faiss.swig_ptr(part),
            faiss.swig_ptr(part_coarse),
            faiss.swig_ptr(D),
            faiss.swig_ptr(I),
            False,
            params,
        )
        return D, I

    (D1, I1), (D2, I2) = in_two_halves(scan, slice(0, None, 2), slice(1, None, 2))
    D, I = np.concatenate([D1, D2], axis=1), np.concatenate([I1, I2], axis=1)
    best = np.argsort(D[0], kind="stable")[:k]  # a missing result is -1 at +inf
    return D[:, best], I[:, best]


def _as_cosine(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 between unit vectors, as cosine (what approximate indexes are built on)."""
    return 1.0 - D / 2.0, I


def _is_exact(index: faiss.Index) -> bool:
    return bool(index.metric_type == faiss.METRIC_INNER_PRODUCT)  # only Flat is built on it

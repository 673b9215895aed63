"""Exact cosine scores of stored vectors, computed by FAISS on their float16 bytes.

The store keeps vectors as float16. Converting them to float32 in numpy costs about 3 ns a
value (6 ms for 1,000 vectors of 2048-d on the 2-core machine), more than reading them;
FAISS's float16 scalar quantizer scores the bytes as they are, with SIMD conversion, in a
fraction of that. Scores equal the float32 dot products of the stored values.

A long list (a filter's thousands of matches, a deep re-rank) is read and scored in two
halves at once: the copy out of the rows file and FAISS's scoring both run without the GIL,
so one query's 10,000 reads take about 60% of the time on two cores.
"""

import faiss
import numpy as np

from index.halves import in_two_halves
from index.store import ItemStore

_LABELS_PER_READ = 10_000  # an exact scan reads and scores this many stored vectors at a time
# FAISS scores the rows it holds, so each is copied into it: a part at a time, since one copy
# of 10,000 rows into fresh memory cost 3 us a row (page faults), five times the scoring.
_ROWS_PER_SCORING = 1024
_SPLIT_FROM = 2048  # labels from which a scan is done in two halves at once


def best_of_codes(query: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and row positions of the k best rows of `codes` (float16 bytes), best first."""
    d = codes.shape[1] // 2
    k = min(k, len(codes))
    if k == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    scorer = faiss.IndexScalarQuantizer(
        d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    query = np.ascontiguousarray(query, np.float32).reshape(1, d)
    scores, rows = [], []
    for start in range(0, len(codes), _ROWS_PER_SCORING):
        scorer.reset()  # keeps its buffer: the next part is copied into memory already mapped
        scorer.add_sa_codes(codes[start : start + _ROWS_PER_SCORING])
        D, I = scorer.search(query, min(k, scorer.ntotal))
        scores.append(D[0])
        rows.append(I[0] + start)
    best = np.concatenate(scores)
    order = np.argsort(-best, kind="stable")[:k]
    return best[order], np.concatenate(rows)[order]


def rerank(store: ItemStore, query: np.ndarray, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine scores of candidate labels from their stored vectors, best first. Labels
    deleted meanwhile may be scored (see ItemStore.encoded_vectors_of)."""
    return exact_among(store, query, np.asarray(labels, np.int64), len(labels))


def exact_among(
    store: ItemStore, query: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of `labels` by exact cosine, best first: a scan of just their stored
    vectors (a filter's matches, or candidates to re-rank), in halves at once when long."""
    if len(labels) < _SPLIT_FROM:
        return _best_of_part(store, query, labels, k)
    half = len(labels) // 2
    halves = in_two_halves(
        lambda part: _best_of_part(store, query, part, k), labels[:half], labels[half:]
    )
    return _merged(list(halves), k)


def _best_of_part(
    store: ItemStore, query: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of `labels`, read a chunk at a time so memory stays bounded."""
    best: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(labels), _LABELS_PER_READ):
        found, codes = store.encoded_vectors_of(labels[start : start + _LABELS_PER_READ].tolist())
        scores, rows = best_of_codes(query, codes, k)
        best = [_merged([*best, (scores, found[rows])], k)]
    return best[0] if best else (np.zeros(0, np.float32), np.zeros(0, np.int64))


def _merged(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    keep = np.argsort(-scores, kind="stable")[:k]
    return scores[keep], labels[keep]

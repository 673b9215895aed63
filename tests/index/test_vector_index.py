"""VectorIndex: recall of approximate kinds against exact search, removal, IVF training."""

import numpy as np
import pytest

from index.vector_index import VectorIndex
from tests.index.vectors import clustered

D_TEST = 128


def recall_at_10(index: VectorIndex, exact: VectorIndex, xq: np.ndarray) -> float:
    _, I = index.search(xq, 10)
    _, truth = exact.search(xq, 10)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, truth, strict=True)]))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, VectorIndex]:
    everything = clustered(20_200, D_TEST)  # queries from the same topics as the data
    xb, xq = everything[:20_000], everything[20_000:]
    labels = np.arange(20_000, dtype=np.int64) + 1000
    exact = VectorIndex(D_TEST)
    exact.add(labels, xb)
    return xb, xq, labels, exact


@pytest.mark.parametrize("factory", ["HNSW32", "IVF256,Flat"])
def test_approximate_recall_at_10_is_at_least_95_percent(
    factory: str, data: tuple[np.ndarray, np.ndarray, np.ndarray, VectorIndex]
) -> None:
    xb, xq, labels, exact = data
    index = VectorIndex(D_TEST, factory)
    if index.is_ivf:
        index.train(xb)
    index.add(labels, xb)
    assert recall_at_10(index, exact, xq) >= 0.95


def test_exact_search_finds_the_vector_itself_first() -> None:
    xb = clustered(500, D_TEST)
    index = VectorIndex(D_TEST)
    index.add(np.arange(500, dtype=np.int64), xb)
    D, I = index.search(xb[:5], 3)
    assert list(I[:, 0]) == [0, 1, 2, 3, 4]
    assert np.allclose(D[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_removed_vectors_are_never_returned(factory: str) -> None:
    xb = clustered(400, D_TEST)
    index = VectorIndex(D_TEST, factory)
    if index.is_ivf:
        index.train(xb)
    index.add(np.arange(400, dtype=np.int64), xb)
    index.remove(np.arange(0, 400, 2, dtype=np.int64))
    assert index.ntotal == 200
    _, I = index.search(xb[:20], 10)
    assert all(i % 2 == 1 for i in I.ravel())


def test_untrained_ivf_searches_exactly_until_it_has_enough_vectors() -> None:
    index = VectorIndex(D_TEST, "IVF16,Flat")
    assert index.train_min == 16 * 39 and "untrained" in index.kind
    xb = clustered(index.train_min, D_TEST)
    index.add(np.arange(len(xb) - 1, dtype=np.int64), xb[:-1])
    assert not index.needs_training
    _, I = index.search(xb[:3], 1)
    assert list(I[:, 0]) == [0, 1, 2]
    index.add(np.array([len(xb) - 1]), xb[-1:])
    assert index.needs_training


def test_search_on_an_empty_index_returns_nothing() -> None:
    _, I = VectorIndex(D_TEST).search(clustered(2, D_TEST), 5)
    assert I.shape == (2, 5) and (I == -1).all()


def test_memory_per_item_follows_the_index_kind() -> None:
    d = 2048
    flat, hnsw = VectorIndex(d, "Flat"), VectorIndex(d, "HNSW32")
    assert flat.bytes_per_item == 4 * d + 40  # float32 code, id, id map entry
    links = hnsw.bytes_per_item - flat.bytes_per_item
    assert 4 * 64 <= links <= 4 * 64 + 32  # 2M neighbours a node on the base level, and more
    compressed = VectorIndex(d, "IVF4,SQ8")
    compressed.train(clustered(4 * 39, d))
    assert compressed.bytes_per_item == d + 8  # a byte a dimension, and the id in its list
    untrained = VectorIndex(d, "IVF4,SQ8")  # serves exactly (Flat) until it is trained
    assert untrained.bytes_per_item == flat.bytes_per_item

"""VectorIndex: recall of approximate kinds, cosine scores, the live bitmap, copies, memory."""

import numpy as np
import pytest

from index.live_labels import pack
from index.vector_index import VectorIndex
from tests.index.vectors import clustered

D_TEST = 128


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, VectorIndex]:
    everything = clustered(20_200, D_TEST)  # queries from the same topics as the data
    xb, xq = everything[:20_000], everything[20_000:]
    labels = np.arange(20_000, dtype=np.int64) + 1000
    exact = VectorIndex.create(D_TEST)
    exact.add(labels, xb)
    return xb, xq, labels, exact


@pytest.mark.parametrize("factory", ["HNSW32", "IVF256,Flat"])
def test_approximate_recall_at_10_is_at_least_95_percent(
    factory: str, data: tuple[np.ndarray, np.ndarray, np.ndarray, VectorIndex]
) -> None:
    xb, xq, labels, exact = data
    index = VectorIndex.create(D_TEST, factory)
    if index.needs_training:
        index.train(xb)
    index.add(labels, xb)
    _, I = index.search(xq, 10, nprobe=16)
    _, truth = exact.search(xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, truth, strict=True)])
    assert recall >= 0.95


def test_exact_search_finds_the_vector_itself_first() -> None:
    xb = clustered(500, D_TEST)
    index = VectorIndex.create(D_TEST)
    index.add(np.arange(500, dtype=np.int64), xb)
    D, I = index.search(xb[:5], 3)
    assert list(I[:, 0]) == [0, 1, 2, 3, 4]
    assert np.allclose(D[:, 0], 1.0, atol=1e-5)


def test_approximate_scores_are_cosines() -> None:
    xb = clustered(400, D_TEST)
    index = VectorIndex.create(D_TEST, "IVF4,Flat")  # built on L2, answered as cosine
    index.train(xb)
    index.add(np.arange(400, dtype=np.int64), xb)
    D, I = index.search(xb[:3], 5, nprobe=4)
    assert np.allclose(D, np.einsum("qd,qkd->qk", xb[:3], xb[I]), atol=1e-4)


def built(factory: str, xb: np.ndarray) -> VectorIndex:
    """An index of `factory` holding xb under labels 0..n-1 (trained first if it must be)."""
    index = VectorIndex.create(D_TEST, factory)
    if index.needs_training:
        index.train(xb)
    index.add(np.arange(len(xb), dtype=np.int64), xb)
    return index


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat", "IVF4,PQ8x4fs"])
def test_labels_outside_the_live_bitmap_are_never_returned(factory: str) -> None:
    xb = clustered(400, D_TEST)
    index = built(factory, xb)
    odd = pack(np.arange(400) % 2 == 1)
    _, I = index.search(xb[:20], 10, live=odd, nprobe=4)
    assert (I >= 0).all() and all(i % 2 == 1 for i in I.ravel())


@pytest.mark.parametrize("factory", ["Flat", "IVF4,PQ8x4fs"])
def test_a_copy_drops_dead_labels_and_the_original_keeps_them(factory: str) -> None:
    xb = clustered(400, D_TEST)
    index = built(factory, xb)
    copy = index.copy()
    assert copy.remove(pack(np.arange(400) < 100)) == 100
    assert (copy.ntotal, index.ntotal) == (300, 400)
    empty = index.empty_like()
    assert empty.ntotal == 0 and not empty.needs_training


def test_search_on_an_empty_index_returns_nothing() -> None:
    _, I = VectorIndex.create(D_TEST).search(clustered(2, D_TEST), 5)
    assert I.shape == (2, 0)


def test_memory_per_item_follows_the_index_kind() -> None:
    d = 2048
    flat, hnsw = VectorIndex.create(d, "Flat"), VectorIndex.create(d, "HNSW32")
    assert flat.bytes_per_item == 4 * d + 8  # float32 code and its id
    links = hnsw.bytes_per_item - flat.bytes_per_item
    assert 4 * 64 <= links <= 4 * 64 + 32  # 2M neighbours a node on the base level, and more
    compressed = VectorIndex.create(d, "IVF4,SQ8")
    assert compressed.bytes_per_item == d + 8  # a byte a dimension, and the id in its list
    fast_scan = VectorIndex.create(d, "IVF4,PQ256x4fs")
    assert fast_scan.bytes_per_item == d // 16 + 8  # 4 bits per 8 dimensions


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8x4fs", "IVF16,PQ8x4fsr"])
def test_a_long_scan_done_in_two_halves_finds_what_one_scan_finds(
    factory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    xb = clustered(4000, D_TEST)
    index = built(factory, xb)
    odd = pack(np.arange(4000) % 2 == 1)
    for nprobe in (16, 5):  # every list (no coarse search), then the nearest few
        monkeypatch.setattr("index.vector_index._SPLIT_FROM_CODES", 10**12)
        whole_D, whole_I = index.search(xb[:1], 50, live=odd, nprobe=nprobe)
        monkeypatch.setattr("index.vector_index._SPLIT_FROM_CODES", 1)
        split_D, split_I = index.search(xb[:1], 50, live=odd, nprobe=nprobe)
        assert (split_I % 2 == 1).all() and (np.diff(split_D[0]) <= 1e-6).all()
        # 4-bit codes tie often: the same scores, and the same labels above the 50th's score.
        assert np.allclose(split_D, whole_D, atol=0.01)
        above = split_D[0] > split_D[0, -1] + 0.01
        assert set(split_I[0][above]) == set(whole_I[0][whole_D[0] > whole_D[0, -1] + 0.01])

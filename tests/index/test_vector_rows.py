"""The dense copy of the stored vectors that exact scans and re-ranking read: it must give
exactly what the store holds, through every kind of write, a clean restart and a crash."""

import shutil
from pathlib import Path

import numpy as np

from index.store import ItemStore

D = 16
WAIT_S = 60.0  # a rebuild of a few hundred rows takes milliseconds; this only bounds a hang


def unit_rows(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def as_stored(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, np.float16).view(np.uint8)


def written(store: ItemStore) -> dict[int, np.ndarray]:
    """label -> vector of what the store now holds, read from SQLite itself."""
    return {
        int(label): vector
        for labels, vectors in store.vectors()
        for label, vector in zip(labels, vectors, strict=True)
    }


def assert_rows_match(store: ItemStore) -> None:
    expected = written(store)
    labels = sorted(expected)
    found, codes = store.encoded_vectors_of(labels)
    assert found.tolist() == labels
    np.testing.assert_array_equal(codes, as_stored(np.stack([expected[x] for x in labels])))


def fill(store: ItemStore) -> None:
    vectors = unit_rows(300, seed=1)
    store.add_many([(f"a{i}", vectors[i], "{}") for i in range(200)])
    store.put("a5", vectors[200], {"replaced": True}, None)  # a new label for an old id
    store.put("b0", vectors[201], {}, None)
    store.replace_vector("a7", vectors[202])  # re-embedding: same label, new vector
    store.delete("a9")
    store.add_many([(f"c{i}", vectors[250 + i], "{}") for i in range(50)])


def test_reads_give_what_the_store_holds_through_every_write_and_a_clean_restart(
    tmp_path: Path,
) -> None:
    store = ItemStore(tmp_path / "items.sqlite3", D, "fp", "m")
    assert store.wait_for_vector_rows(WAIT_S)
    fill(store)
    assert_rows_match(store)
    store.close()
    reopened = ItemStore(tmp_path / "items.sqlite3", D, "fp", "m")
    try:
        assert reopened.wait_for_vector_rows(0)  # trusted at once: closed cleanly
        assert_rows_match(reopened)
        reopened.put("d0", unit_rows(1, seed=9)[0], {}, None)
        assert_rows_match(reopened)
    finally:
        reopened.close()


def test_a_crash_or_a_changed_file_makes_the_copy_rebuilt_from_the_store(tmp_path: Path) -> None:
    live = tmp_path / "live"
    store = ItemStore(live / "items.sqlite3", D, "fp", "m")
    fill(store)
    crashed = tmp_path / "crashed"  # the files as kill -9 would leave them: no clean close
    shutil.copytree(live, crashed)
    store.close()
    with open(live / "items.vectors", "r+b") as rows:  # changed after the clean close
        rows.seek(2 * D * 3)
        rows.write(b"\xff" * 2 * D)
    for directory in (crashed, live):
        reopened = ItemStore(directory / "items.sqlite3", D, "fp", "m")
        try:
            assert_rows_match(reopened)  # from SQLite until the rebuild is done
            assert reopened.wait_for_vector_rows(WAIT_S)
            assert_rows_match(reopened)
        finally:
            reopened.close()


def test_an_exact_scan_long_enough_to_be_split_gives_the_exact_top_k(tmp_path: Path) -> None:
    from index.exact_scores import exact_among

    store = ItemStore(tmp_path / "items.sqlite3", D, "fp", "m")
    try:
        vectors = unit_rows(6000, seed=3)
        store.add_many([(f"v{i}", vector, "{}") for i, vector in enumerate(vectors)])
        query = unit_rows(1, seed=4)[0]
        labels = np.arange(1, 6001, dtype=np.int64)[::-1]  # any order
        stored = vectors.astype(np.float16).astype(np.float32)
        expected = np.argsort(-(stored @ query), kind="stable")[:25] + 1
        assert store.wait_for_vector_rows(WAIT_S)
        scores, found = exact_among(store, query, labels, 25)  # two halves, chunks of 1024
        assert found.tolist() == expected.tolist()
        np.testing.assert_allclose(scores, (stored @ query)[expected - 1], rtol=1e-5)
    finally:
        store.close()

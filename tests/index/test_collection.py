"""Collection: durability across reopen, snapshots, model fingerprints, concurrent use."""

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.collection import Collection, IndexInUse
from index.store import ModelMismatch
from tests.index.crashing_writer import D_TEST, ROWS, run_then_die
from tests.index.vectors import clustered

OPENED: list[Collection] = []


def open_collection(
    path: Path, factory: str = "Flat", snapshot_every: int = 1000, exact_up_to: int | None = None
) -> Collection:
    collection = Collection(
        path,
        d=D_TEST,
        fingerprint="fp-1",
        model="m",
        factory=factory,
        snapshot_every=snapshot_every,
        exact_up_to=exact_up_to,
    )
    OPENED.append(collection)
    return collection


@pytest.fixture(autouse=True)
def close_opened() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def ids_of(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [hit.id for hit in hits]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_items_survive_a_crash(tmp_path: Path, factory: str) -> None:
    ops: list[list[object]] = [["put", f"item-{i}", i, {"n": i}] for i in range(50)]
    ops += [["delete", "item-3"], ["put", "item-4", 5, {"n": "replaced"}]]
    run_then_die(tmp_path, factory, 1000, ops)
    xb = clustered(ROWS, D_TEST)
    reopened = open_collection(tmp_path, factory)
    assert reopened.stats().count == 49
    assert reopened.get("item-3") is None
    assert reopened.get("item-4").metadata == {"n": "replaced"}  # type: ignore[union-attr]
    assert ids_of(reopened.search(xb[7], 1)) == ["item-7"]
    assert set(ids_of(reopened.search(xb[5], 2))) == {"item-5", "item-4"}


def test_a_snapshot_catches_up_on_the_items_added_after_it(tmp_path: Path) -> None:
    ops: list[list[object]] = [["put", f"item-{i}", i, {}] for i in range(20)]
    # A snapshot of the first 20; then item-2 (in the snapshot) is deleted, and "late" is
    # added and deleted, after it.
    ops += [["build"]] + [["put", f"item-{i}", i, {}] for i in range(20, 25)]
    ops += [["delete", "item-2"], ["put", "late", 25, {}], ["delete", "late"]]
    run_then_die(tmp_path, "Flat", 10, ops)
    assert (tmp_path / "snapshot.json").exists()
    xb = clustered(ROWS, D_TEST)
    watermark = json.loads((tmp_path / "snapshot.json").read_text())["watermark"]
    reopened = open_collection(tmp_path, snapshot_every=10)
    labels = [label for rows in reopened.store.labels_and_metadata() for label, _ in rows]
    after = [label for label in labels if label > watermark]
    assert len(after) == 5  # item-20..24
    assert reopened.stats().changes_since_snapshot == len(after)  # added from the store
    assert reopened.stats().count == 24
    assert reopened.get("item-2") is None and reopened.get("late") is None
    assert ids_of(reopened.search(xb[24], 1)) == ["item-24"]
    assert "item-2" not in ids_of(reopened.search(xb[2], 24))


def test_a_second_process_cannot_open_an_open_index(tmp_path: Path) -> None:
    open_collection(tmp_path)
    with pytest.raises(IndexInUse, match="pid"):
        open_collection(tmp_path)


def _break_data(directory: Path) -> None:
    (data_file,) = directory.glob("index-*.faiss")
    data_file.write_bytes(b"not a faiss index")


def _header_edit(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        header = json.loads((directory / "snapshot.json").read_text())
        change(header)
        (directory / "snapshot.json").write_text(json.dumps(header))

    return edit


BROKEN_SNAPSHOTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "damaged data file": (_break_data, "index-"),
    "garbage header": (lambda d: (d / "snapshot.json").write_text("{not json"), "snapshot.json"),
    "missing field": (_header_edit(lambda h: h.pop("watermark")), "watermark: field required"),
    "mistyped field": (_header_edit(lambda h: h.update(d="wide")), "d: input should be"),
    "unknown field": (_header_edit(lambda h: h.update(extra=1)), "extra: extra inputs"),
    "a file elsewhere": (_header_edit(lambda h: h.update(data="../../x.faiss")), "data:"),
    "mistyped plan": (_header_edit(lambda h: h["plan"].update(nprobe=[])), "plan.nprobe"),
}


@pytest.mark.parametrize("broken", BROKEN_SNAPSHOTS)
def test_a_broken_snapshot_is_rebuilt_from_the_store(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    xb = clustered(10, D_TEST)
    first = open_collection(tmp_path)
    for i in range(10):
        first.put(f"item-{i}", xb[i], {}, None)
    first.close()
    breaking, named = BROKEN_SNAPSHOTS[broken]
    breaking(tmp_path)
    with caplog.at_level(logging.WARNING, "index.collection"):
        reopened = open_collection(tmp_path)
    assert reopened.stats().count == 10
    assert ids_of(reopened.search(xb[6], 1)) == ["item-6"]
    assert "rebuilding" in caplog.text and named in caplog.text.lower()


def test_another_model_is_refused_with_the_reindex_command(tmp_path: Path) -> None:
    first = open_collection(tmp_path)
    first.put("a", clustered(1, D_TEST)[0], {}, None)
    first.close()
    with pytest.raises(ModelMismatch, match="resnet-serve index reindex"):
        Collection(tmp_path, d=D_TEST, fingerprint="fp-2", model="other").close()


def test_an_empty_index_adopts_a_new_model(tmp_path: Path) -> None:
    open_collection(tmp_path).close()
    adopted = Collection(tmp_path, d=D_TEST, fingerprint="fp-2", model="other")
    assert adopted.stats().fingerprint == "fp-2"
    adopted.close()


def test_ivf_switches_from_exact_to_trained_when_big_enough(tmp_path: Path) -> None:
    xb = clustered(4 * 39 + 5, D_TEST)
    collection = open_collection(tmp_path, "IVF4,Flat")
    for i in range(4 * 39 - 1):
        collection.put(f"item-{i}", xb[i], {}, None)
    collection.settle()
    assert collection.stats().kind == "Flat"
    assert "exact until 156 vectors" in collection.stats().reason
    collection.put("trigger", xb[-1], {}, None)
    collection.settle()
    assert collection.stats().kind == "IVF4,Flat"
    assert ids_of(collection.search(xb[10], 1)) == ["item-10"]


def test_hnsw_tombstones_are_compacted(tmp_path: Path) -> None:
    xb = clustered(300, D_TEST)
    collection = open_collection(tmp_path, "HNSW32")
    for i in range(300):
        collection.put(f"item-{i}", xb[i], {}, None)
    for i in range(150):
        collection.delete(f"item-{i}")
    collection.settle()
    stats = collection.stats()
    assert stats.count == 150 and stats.tombstones <= 100


def test_similar_excludes_the_item_itself(tmp_path: Path) -> None:
    xb = clustered(20, D_TEST)
    collection = open_collection(tmp_path)
    for i in range(20):
        collection.put(f"item-{i}", xb[i], {}, None)
    hits = collection.similar("item-0", 5)
    assert hits is not None and len(hits) == 5 and "item-0" not in ids_of(hits)
    assert collection.similar("unknown", 5) is None


def test_writes_during_searches_never_break_a_search(tmp_path: Path) -> None:
    xb = clustered(600, D_TEST)
    collection = open_collection(tmp_path, "HNSW32", snapshot_every=100)
    for i in range(200):
        collection.put(f"stable-{i}", xb[i], {}, None)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        rng = np.random.default_rng(threading.get_ident())
        while not stop.is_set():
            i = int(rng.integers(0, 200))
            try:
                hits = collection.search(xb[i], 5)
                assert hits[0].id == f"stable-{i}", hits
            except BaseException as exc:  # collected and re-raised in the test thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for i in range(200, 600):  # the one writer: adds, replaces and deletes
        collection.put(f"churn-{i % 50}", xb[i], {}, None)
        if i % 7 == 0:
            collection.delete(f"churn-{(i + 3) % 50}")
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert all(collection.get(f"stable-{i}") for i in range(200))


def test_vectors_are_stored_as_float16_and_score_within_1e3_of_float32(tmp_path: Path) -> None:
    d = 2048  # the service's embedding size: the widest sum of rounding errors
    xb = clustered(300, d, seed=3)
    collection = Collection(tmp_path, d=d, fingerprint="fp-1", model="m")
    OPENED.append(collection)
    for i, vector in enumerate(xb):
        collection.put(f"item-{i}", vector, {}, None)
    (blob,) = collection.store._db.execute(
        "SELECT vector FROM items WHERE id = 'item-0'"
    ).fetchone()
    assert len(blob) == 2 * d  # half of float32
    query = clustered(1, d, seed=4)[0]
    exact = xb @ query
    for hit in collection.search(query, k=20):
        assert abs(hit.score - exact[int(hit.id.split("-")[1])]) < 1e-3
    collection.close()
    reopened = Collection(tmp_path, d=d, fingerprint="fp-1", model="m")  # rebuilt from float16
    OPENED.append(reopened)
    similar = reopened.similar("item-7", k=5)
    assert similar is not None and similar[0].score == pytest.approx(
        float(np.max(np.delete(xb @ xb[7], 7))), abs=1e-3
    )


def test_a_store_written_with_float32_vectors_still_reads_them(tmp_path: Path) -> None:
    xb = clustered(20, D_TEST, seed=5)
    collection = open_collection(tmp_path)
    for i, vector in enumerate(xb):
        collection.put(f"item-{i}", vector, {}, None)
    with collection.store._lock:  # as a release before float16 wrote them
        for i, vector in enumerate(xb):
            collection.store._db.execute(
                "UPDATE items SET vector = ? WHERE id = ?", (vector.tobytes(), f"item-{i}")
            )
    collection.close()
    OPENED.remove(collection)
    (tmp_path / "snapshot.json").unlink()  # rebuild the index from the store
    reopened = open_collection(tmp_path)
    stored = reopened.store.vector("item-3")
    assert stored is not None and np.array_equal(stored, xb[3])
    assert ids_of(reopened.search(xb[3], k=1)) == ["item-3"]
    reopened.put("item-3", xb[3], {}, None)  # rewritten as float16 beside float32 neighbours
    assert [len(labels) for labels, _ in reopened.store.vectors()] == [20]

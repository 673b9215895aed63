"""Filters that cut across many small clusters keep their recall (issue: a filter independent
of the clusters leaves a query's true top 10 in lists an IVF search never probes).

One collection of many small, tight clusters with metadata assigned by row number, so every
filter is independent of the clusters; its IVF index is built and measured once per module.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import index.collection
import index.filtered_tuning
from index.collection import Collection
from index.filtered_plan import EXACT, FilteredTuning, ShareStep, choose_filtered
from index.plan import IndexPlan
from index.snapshot_header import SnapshotHeader
from index.store import ItemStore

D = 256  # 4-bit PQ codes, as at 2048-d
N = 30_000
CLUSTERS = 1_000  # 30 members each: members score about 0.55, strangers about 0
QUERIES = 40


def metadata_of(row: int) -> dict[str, object]:
    return {"half": row % 2 == 1, "tenth": row % 10 == 3, "hundredth": row % 100 == 7, "row": row}


def many_small_clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (n of them) and QUERIES held-out queries from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, CLUSTERS, n + QUERIES)
    spread = rng.standard_normal((n + QUERIES, D)).astype(np.float32) / np.sqrt(D)
    vectors = 0.74 * centres[which] + 0.67 * spread
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[:n], vectors[n:]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return many_small_clusters(N, seed=5)


@pytest.fixture(scope="module")
def directory(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]
) -> Path:
    """A store of N items written in bulk (as an import does); the index is built at open."""
    path = tmp_path_factory.mktemp("clusters")
    store = ItemStore(path / "items.sqlite3", D, "fp", "m")
    xb, _ = data
    store.add_many([(f"item-{i}", xb[i], json.dumps(metadata_of(i))) for i in range(N)])
    store.close()
    return path


@pytest.fixture(scope="module")
def opened(directory: Path) -> Iterator[dict[str, Collection]]:
    """The collections built so far, by how their plans were measured; closed at the end."""
    built: dict[str, Collection] = {}
    yield built
    for collection in built.values():
        collection.close()


@pytest.fixture(scope="module", params=["measured", "approximate", "exact"])
def collection(
    request: pytest.FixtureRequest, directory: Path, opened: dict[str, Collection]
) -> Iterator[Collection]:
    """The collection with its plans as measured; with the approximate plan wherever it was
    measured to hold recall (the exact scan made to look dear while measuring); and the
    first with the exact plan for every filter. Each opens a copy of the bulk-written store."""
    kind = "approximate" if request.param == "approximate" else "measured"
    if kind not in opened:
        copy = directory / kind
        copy.mkdir()
        (copy / "items.sqlite3").write_bytes((directory / "items.sqlite3").read_bytes())
        with pytest.MonkeyPatch.context() as patch:
            if kind == "approximate":
                patch.setattr(index.filtered_tuning, "_exact_seconds_per_item", lambda *_: 1.0)
            opened[kind] = Collection(copy, d=D, fingerprint="fp", model="m", exact_up_to=1000)
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "exact":
            patch.setattr(index.collection, "choose_filtered", lambda *_: None)
        yield opened[kind]


def exact_top(xb: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int) -> list[str]:
    scores = xb[rows] @ query
    return [f"item-{rows[j]}" for j in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("key, share", [("hundredth", 0.01), ("tenth", 0.1), ("half", 0.5)])
def test_filters_across_the_clusters_keep_recall(
    collection: Collection, data: tuple[np.ndarray, np.ndarray], key: str, share: float
) -> None:
    xb, queries = data
    assert collection.stats().kind.startswith("IVF")  # the approximate index serves
    rows = np.array([i for i in range(N) if metadata_of(i)[key]])
    assert len(rows) == share * N
    recall = []
    for query in queries:
        hits = collection.search(query, 10, where={key: [True]})
        assert len(hits) == 10 and all(metadata_of(int(h.id[5:]))[key] for h in hits)
        recall.append(len({h.id for h in hits} & set(exact_top(xb, query, rows, 10))) / 10)
    assert np.mean(recall) >= 0.95, np.mean(recall)


def test_each_fixture_takes_the_plan_it_names(
    collection: Collection, request: pytest.FixtureRequest
) -> None:
    """With 30 items a cluster, a filter of 10% leaves 3 of a query's neighbours: the rest of
    its true top 10 are strangers no inverted list holds, so only half holds recall there."""
    route = collection.filtered_route({"half": [True]}).plan
    stats = collection.stats()
    kind = request.node.callspec.params["collection"]
    if kind == "exact":
        assert route == "exact"
    elif kind == "approximate":
        assert route.startswith("approximate as measured"), stats.filtered
        assert stats.filtered_exact_up_to < N // 2, stats.filtered
    else:
        assert (route == "exact") == (stats.filtered_exact_up_to >= N // 2), stats.filtered


def test_the_plan_switches_at_the_measured_threshold(collection: Collection) -> None:
    """Whatever the measurements, the threshold /v1/index reports is where the plan switches."""
    plan = collection._serving.generation.plan
    assert plan.filtered is not None and plan.filtered.steps, collection.stats().filtered
    threshold = plan.filtered.exact_up_to(N)
    assert choose_filtered(plan.filtered, threshold, N) is None
    if threshold < N:
        assert choose_filtered(plan.filtered, threshold + 1, N) is not None


def test_the_cheaper_plan_that_holds_recall_is_chosen() -> None:
    tuning = FilteredTuning(
        exact_seconds_per_item=1e-6,
        steps=(ShareStep(0.5, 8, 100, 0.99, 2e-3), ShareStep(0.1, 32, 400, 0.98, 3e-3)),
    )
    count = 100_000
    assert choose_filtered(tuning, 9_999, count) is None  # below every measured share
    assert choose_filtered(tuning, 10_000, count) == tuning.steps[1]  # 10 ms exact vs 3 ms
    assert choose_filtered(tuning, 60_000, count) == tuning.steps[0]
    # Fifty asked for at 60% need the neighbours ten need at 12%: the 10% step holds that.
    assert choose_filtered(tuning, 60_000, count, k=50) == tuning.steps[1]
    assert choose_filtered(tuning, 60_000, count, k=100) is None  # as ten at 6%: exact
    cheap_scan = FilteredTuning(1e-8, tuning.steps)  # 0.1 ms for 10,000: exact wins there
    assert choose_filtered(cheap_scan, 10_000, count) is None
    assert choose_filtered(cheap_scan, 60_000, count) is None
    assert cheap_scan.exact_up_to(count) == count
    assert tuning.exact_up_to(count) == 9_999
    # It survives the snapshot header's round trip (JSON, read back with pydantic).
    plan = IndexPlan("IVF64,PQ16", 8, 20_000, "tuned", tuning)
    header = SnapshotHeader(
        format=2,
        watermark=5,
        d=16,
        factory="auto",
        fingerprint="f",
        plan=plan,
        data="index-5.faiss",
    )
    assert SnapshotHeader.model_validate_json(header.model_dump_json()).plan == plan
    # A share where nothing held recall is exact, though a sparser one held again.
    gap = FilteredTuning(
        1e-6,
        (tuning.steps[0], ShareStep(0.1, EXACT, 0, 1.0, 0.1), ShareStep(0.01, 64, 800, 0.99, 5e-3)),
    )
    assert choose_filtered(gap, 20_000, count) is None
    assert choose_filtered(gap, 6_000, count) == gap.steps[2]  # 6 ms exact against 5 ms
    assert "0.1: exact" in gap.describe(count)


@pytest.mark.parametrize("rows", [[], [17], list(range(10)), list(range(4))])
def test_nothing_one_k_and_fewer_than_k_matches(
    collection: Collection, data: tuple[np.ndarray, np.ndarray], rows: list[int]
) -> None:
    xb, queries = data
    where = {"row": rows or [-1]}
    hits = collection.search(queries[0], 10, where=where)
    assert [h.id for h in hits] == exact_top(xb, queries[0], np.array(rows, int), 10)


def test_deleted_items_never_appear(
    collection: Collection, data: tuple[np.ndarray, np.ndarray]
) -> None:
    xb, queries = data
    rows = np.array([i for i in range(N) if metadata_of(i)["hundredth"]])
    before = collection.search(queries[1], 10, where={"hundredth": [True]})
    gone = before[:3]
    stored = {h.id: collection.store.vector(h.id) for h in gone}
    for hit in gone:
        collection.delete(hit.id)
    try:
        for where in ({"hundredth": [True]}, {"row": [int(h.id[5:]) for h in before]}):
            after = collection.search(queries[1], 10, where=where)
            assert not {h.id for h in after} & set(stored)
        kept = np.array([r for r in rows if f"item-{r}" not in stored])
        after = collection.search(queries[1], 10, where={"hundredth": [True]})
        assert [h.id for h in after][:5] == exact_top(xb, queries[1], kept, 5)
    finally:
        for item_id, vector in stored.items():
            assert vector is not None
            collection.put(item_id, vector, metadata_of(int(item_id[5:])), None)


def test_more_than_ten_asked_for_come_back_in_order(
    collection: Collection, data: tuple[np.ndarray, np.ndarray]
) -> None:
    xb, queries = data
    rows = np.array([i for i in range(N) if metadata_of(i)["half"]])
    hits = collection.search(queries[2], 50, where={"half": [True]})
    assert len(hits) == 50 and all(metadata_of(int(h.id[5:]))["half"] for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    truth = set(exact_top(xb, queries[2], rows, 50))
    assert len({h.id for h in hits} & truth) >= 45

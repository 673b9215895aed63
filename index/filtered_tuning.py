"""Measuring the filtered-search plan of a freshly trained index (see index.filtered_plan).

For filters of each share in FILTER_SHARES, drawn independently of the vectors, the exact
filtered top 10 of the tuning queries is known (computed while the index was filled); the
approximate plan is then tried at growing nprobe and re-rank depth until it finds
FILTERED_TARGET_RECALL of it, and timed. A share where it cannot, or only for more than the
exact scan of its matches costs, is answered exactly. Smaller shares are measured still:
recall does not fall with the share (at 300k items in clusters of 100, 10% needed 1,600
candidates and 0.2% held with 400, since fewer matches are re-ranked deeper).
"""

import logging
import time

import numpy as np

from index.exact_scores import exact_among, rerank
from index.filtered_plan import (
    DEPTH_FACTORS,
    EXACT,
    FILTER_SHARES,
    FILTER_TUNING_QUERIES,
    FILTERED_TARGET_RECALL,
    MIN_TUNED_MATCHES,
    FilteredTuning,
    ShareStep,
    tuning_filter,
)
from index.live_labels import pack
from index.store import ItemStore
from index.vector_index import VectorIndex

log = logging.getLogger(__name__)

_EXACT_SAMPLE = 4096  # labels the exact plan's cost per item is measured on


def tuned_shares(count: int) -> list[float]:
    """The shares worth measuring for a collection of `count` items."""
    return [share for share in FILTER_SHARES if share * count >= MIN_TUNED_MATCHES]


def tune_filtered(
    store: ItemStore,
    main: VectorIndex,
    live: np.ndarray,
    queries: tuple[np.ndarray, np.ndarray],
    truth: dict[float, np.ndarray],
    *,
    nprobes: list[int],
    base_depth: int,
) -> FilteredTuning:
    """The filtered plan for `main`. `live`: a bool per label; `queries`: (labels, vectors);
    `truth`: by share, each query's exact filtered top 10 labels (its own label left out)."""
    labels, vectors = queries[0][:FILTER_TUNING_QUERIES], queries[1][:FILTER_TUNING_QUERIES]
    store.wait_for_vector_rows()  # after a crash it is rebuilt: the costs are measured on it
    per_item = _exact_seconds_per_item(store, live, vectors)
    steps: list[ShareStep] = []
    floor = nprobes[0]
    everyone = np.arange(len(live), dtype=np.int64)
    for share in sorted(truth, reverse=True):
        allowed = pack(live & tuning_filter(everyone, share))
        exact_seconds = share * int(live.sum()) * per_item
        step = _cheapest_holding(
            store,
            main,
            allowed,
            (labels, vectors),
            truth[share][:FILTER_TUNING_QUERIES],
            [n for n in nprobes if n >= floor],
            [factor * base_depth for factor in DEPTH_FACTORS],
            share,
            exact_seconds,
        )
        if step is None:  # answered exactly at this share (a smaller one may hold again)
            steps.append(ShareStep(share, EXACT, 0, 1.0, exact_seconds))
            continue
        steps.append(step)
        floor = step.nprobe
    tuning = FilteredTuning(per_item, tuple(steps))
    log.info("filtered search: %s", tuning.describe(int(live.sum())))
    return tuning


def _cheapest_holding(
    store: ItemStore,
    main: VectorIndex,
    allowed: np.ndarray,
    queries: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,
    nprobes: list[int],
    depths: list[int],
    share: float,
    exact_seconds: float,
) -> ShareStep | None:
    """The first (nprobe, depth), cheapest first, that holds recall for less than the exact
    plan; None when none does."""
    for nprobe in nprobes:
        for depth in depths:
            recall, seconds = _measure(store, main, allowed, queries, truth, nprobe, depth)
            if seconds >= exact_seconds:
                return None  # every step from here costs more still
            if recall >= FILTERED_TARGET_RECALL:
                return ShareStep(share, nprobe, depth, round(recall, 4), seconds)
    return None


def _measure(
    store: ItemStore,
    main: VectorIndex,
    allowed: np.ndarray,
    queries: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,
    nprobe: int,
    depth: int,
) -> tuple[float, float]:
    """Recall@10 and the median seconds of a query with the approximate plan."""
    recalls, timings = [], []
    for own, query, top in zip(*queries, truth, strict=True):
        started = time.perf_counter()
        _, found = main.search(query[None], depth, live=allowed, nprobe=nprobe)
        ranked = rerank(store, query, [int(x) for x in found[0] if x >= 0])[1]
        timings.append(time.perf_counter() - started)
        ranked = ranked[ranked != own][:10]
        recalls.append(len(set(ranked.tolist()) & set(top.tolist())) / max(1, len(top)))
    return float(np.mean(recalls)), float(np.median(timings))


def _exact_seconds_per_item(store: ItemStore, live: np.ndarray, queries: np.ndarray) -> float:
    """What the exact plan costs per matching item: reading it from the store and scoring."""
    live_labels = np.flatnonzero(live)
    sample = np.sort(
        np.random.default_rng(0).choice(
            live_labels, min(_EXACT_SAMPLE, len(live_labels)), replace=False
        )
    )
    timings = []
    for query in queries[:5]:
        started = time.perf_counter()
        exact_among(store, query, sample, 11)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings)) / max(1, len(sample))

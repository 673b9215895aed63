"""A generation of the index: a FAISS index made beside the live one, then swapped in.

Every index the collection serves is built here, on a background thread, from the item
store: at first start, when the collection outgrows its index (a new plan, trained again),
when recent additions should join the main index (a merge: a copy of the main index plus the
new labels), and when deleted vectors should leave it. A generation is never written to once
it serves, so it can be written to disk and searched without a lock.

`watermark`: every label up to it that was live when the build read the store is in the
index. Later labels are added to the collection's small delta index by the writer, and a
restart adds them from the store, so a snapshot never needs a log to catch up.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from index.exact_scores import rerank
from index.filtered_plan import tuning_filter
from index.filtered_tuning import tune_filtered, tuned_shares
from index.live_labels import LiveLabels, pack
from index.plan import NPROBES, TARGET_RECALL, TRAIN_POINTS_PER_LIST, IndexPlan
from index.store import ItemStore
from index.vector_index import VectorIndex

log = logging.getLogger(__name__)

RERANK_MIN = 100  # approximate candidates re-ranked exactly per query, at least
RERANK_FACTOR = 4  # ... and this many per result asked for
TUNING_QUERIES = 64
MAX_TRAIN_POINTS = 100_000


class BuildCancelled(Exception):
    """The collection is closing; the half-built generation is dropped."""


@dataclass(frozen=True)
class Generation:
    main: VectorIndex
    plan: IndexPlan
    watermark: int


def candidates(k: int, exact: bool, share: float = 1.0) -> int:
    """How many candidates to ask an index for, to return k after exact re-ranking, when a
    `share` of the items may be returned. A selective filter leaves a query's nearest matches
    sparse: the k best sit among many near-ties that 4-bit codes cannot order, so more of
    them are re-ranked exactly (5x at 1%: recall@10 0.94 -> 0.98 on the 1M benchmark)."""
    if exact:
        return k
    widen = min(5.0, max(1.0, math.sqrt(0.25 / share)))
    return round(max(RERANK_MIN, RERANK_FACTOR * k) * widen)


def build(
    store: ItemStore,
    plan: IndexPlan,
    live: LiveLabels,
    *,
    base: Generation | None,
    ef_search: int,
    cancelled: Callable[[], bool],
) -> Generation:
    """A new generation for `plan`: a merge into a copy of `base` when it has that plan
    already, else a fresh index (trained first, its nprobe then measured)."""
    watermark = store.max_label()
    if base is not None and base.plan.factory == plan.factory and base.main.can_remove:
        return _merge(store, base, live, watermark, cancelled)
    main = VectorIndex.create(store.d, plan.factory, ef_search=ef_search)
    truth = None
    if main.needs_training:
        sample_labels, sample = _training_sample(store, live, watermark, main)
        main.train(sample)
        truth = _ExactTopTen(
            sample_labels[:TUNING_QUERIES], sample[:TUNING_QUERIES], tuned_shares(live.count)
        )
        del sample
    for labels, vectors in store.vectors(upto=watermark):
        _stop_if(cancelled)
        main.add(labels, vectors)
        if truth is not None:
            truth.update(labels, vectors)
    if truth is not None and main.nlist:
        plan = _tune(store, main, plan, truth)
        filtered = tune_filtered(
            store,
            main,
            live.as_bool(watermark + 1)[: watermark + 1],
            (truth.labels, truth.queries),
            truth.filtered,
            nprobes=[n for n in NPROBES if plan.nprobe <= n < main.nlist] + [main.nlist],
            base_depth=candidates(10, exact=False),
        )
        plan = replace(plan, filtered=filtered)
    log.info("built index %s over %d vectors: %s", plan.factory, main.ntotal, plan.reason)
    return Generation(main, plan, watermark)


def _merge(
    store: ItemStore,
    base: Generation,
    live: LiveLabels,
    watermark: int,
    cancelled: Callable[[], bool],
) -> Generation:
    main = base.main.copy()
    dead = ~live.as_bool(base.watermark + 1)[: base.watermark + 1]
    dropped = main.remove(pack(dead)) if dead.any() else 0
    for labels, vectors in store.vectors(after=base.watermark, upto=watermark):
        _stop_if(cancelled)
        main.add(labels, vectors)
    log.info("merged index: %d vectors, %d dropped", main.ntotal, dropped)
    return Generation(main, base.plan, watermark)


def _stop_if(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise BuildCancelled


def _training_sample(
    store: ItemStore, live: LiveLabels, watermark: int, index: VectorIndex
) -> tuple[np.ndarray, np.ndarray]:
    """Random live (labels, vectors), as many as training wants (40 a list, for IVF)."""
    wanted = min(MAX_TRAIN_POINTS, (TRAIN_POINTS_PER_LIST + 1) * max(1, index.nlist))
    live_labels = np.flatnonzero(live.as_bool()[: watermark + 1])
    rng = np.random.default_rng(0)
    chosen = rng.choice(live_labels, min(wanted, len(live_labels)), replace=False).tolist()
    parts = [store.vectors_of(chosen[i : i + 500]) for i in range(0, len(chosen), 500)]
    labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, store.d), np.float32)
    order = rng.permutation(len(labels))
    return labels[order], vectors[order]


class _ExactTopTen:
    """The exact 10 nearest labels of each query (the query's own label left out), fed the
    collection chunk by chunk while the index is built; and the same among the labels of a
    tuning filter of each share in `shares` (see index.filtered_plan)."""

    def __init__(self, labels: np.ndarray, queries: np.ndarray, shares: list[float]) -> None:
        self.labels = labels
        self.queries = queries
        self._shares = shares
        empty = (
            np.full((len(queries), 0), -np.inf, np.float32),
            np.zeros((len(queries), 0), np.int64),
        )
        self._best = {share: empty for share in [1.0, *shares]}

    @property
    def _top(self) -> np.ndarray:
        return self._best[1.0][1]

    @property
    def filtered(self) -> dict[float, np.ndarray]:
        """By share, each query's exact top 10 among the tuning filter's labels."""
        return {share: self._best[share][1] for share in self._shares}

    def update(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        scores = self.queries @ vectors.T
        scores[self.labels[:, None] == labels[None, :]] = -np.inf
        for share, (best_scores, best_labels) in self._best.items():
            kept = labels if share == 1.0 else labels[tuning_filter(labels, share)]
            chunk = scores if share == 1.0 else scores[:, tuning_filter(labels, share)]
            every_score = np.concatenate([best_scores, chunk], axis=1)
            every = np.concatenate(
                [best_labels, np.broadcast_to(kept, (len(self.queries), len(kept)))], axis=1
            )
            keep = np.argsort(-every_score, axis=1, kind="stable")[:, :10]
            self._best[share] = (
                np.take_along_axis(every_score, keep, axis=1),
                np.take_along_axis(every, keep, axis=1),
            )

    def recall(self, found: list[np.ndarray]) -> float:
        return float(
            np.mean(
                [
                    len(set(f[:10].tolist()) & set(t.tolist())) / 10
                    for f, t in zip(found, self._top, strict=True)
                ]
            )
        )


def _tune(store: ItemStore, main: VectorIndex, plan: IndexPlan, truth: _ExactTopTen) -> IndexPlan:
    """The smallest nprobe whose re-ranked results find TARGET_RECALL of the exact top 10."""
    recall, nprobe = 0.0, plan.nprobe
    for nprobe in [n for n in NPROBES if n < main.nlist] + [main.nlist]:
        found = []
        for own, query in zip(truth.labels, truth.queries, strict=True):
            _, labels = main.search(query[None], candidates(11, exact=False), nprobe=nprobe)
            ranked = rerank(store, query, [int(x) for x in labels[0] if x >= 0])[1]
            found.append(ranked[ranked != own])
        recall = truth.recall(found)
        if recall >= TARGET_RECALL:
            break
    return plan.tuned(nprobe, recall)

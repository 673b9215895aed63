"""Which index a collection of a given size should have, and why.

`auto` (the default) searches exactly while that stays well inside the latency target, then
moves to an inverted file with 4-bit product-quantisation codes (FAISS fast scan) whose
candidates are re-ranked exactly from the stored vectors:
- nlist near 2*sqrt(n) lists, trained with k-means on L2 (on unit vectors L2 ranks as
  cosine does, and L2 k-means keeps the lists balanced; inner-product k-means let a few lists
  take most vectors on clustered data). autofaiss sizes 4-16*sqrt(n); fewer, longer lists
  suit fast-scan codes, which make a long list cheap to scan, while training, assigning
  vectors to lists and the coarse search (what 2 cores pay for) all cost in proportion to
  nlist;
- d/8 sub-quantizers of 4 bits: d/16 bytes an item (128 B at 2048-d), so 1M items take
  about 140 MB with their ids, and 100M about 14 GB (below 256 dimensions, a byte each);
- nprobe measured at build time: the smallest that finds 99% of the exact top 10 for
  queries drawn from the collection.
The plan is rebuilt in the background when the collection has grown (or shrunk) 4x from the
size it was made for, so nlist keeps suiting it. An explicit FAISS factory string is built as
given (IVF ones exact until they have enough vectors to train).
"""

import functools
import math
import time
from dataclasses import dataclass, replace

import faiss
import numpy as np

from index.filtered_plan import FilteredTuning

AUTO = "auto"
FLAT = "Flat"
GROWTH = 4  # rebuild when the collection is this many times larger (or smaller) than planned
TRAIN_POINTS_PER_LIST = 39  # FAISS warns below this
NPROBES = (4, 8, 16, 32, 64, 128, 256)
TARGET_RECALL = 0.99
TUNED = "; measured nprobe "


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # the FAISS factory string (Flat: exact)
    nprobe: int  # IVF lists visited per query (0 for non-IVF)
    built_for: int  # the collection size the plan was chosen for
    reason: str
    # How filtered queries are answered (measured with nprobe; None: not measured, as for an
    # exact index or a snapshot written before filtered plans)
    filtered: FilteredTuning | None = None

    @property
    def exact(self) -> bool:
        return self.factory == FLAT

    def tuned(self, nprobe: int, recall: float) -> "IndexPlan":
        why = self.reason.split(TUNED)[0]  # a plan trained again is measured again
        return replace(self, nprobe=nprobe, reason=f"{why}{TUNED}{nprobe} (recall@10 {recall:.3f})")


@functools.cache
def exact_seconds_per_item(d: int) -> float:
    """How long exact search takes per stored vector on this machine (measured once)."""
    rows = 8192
    index = faiss.IndexFlatIP(d)
    index.add(np.random.default_rng(0).standard_normal((rows, d), dtype=np.float32))
    query = np.ones((1, d), np.float32)
    timings = []
    for _ in range(15):
        started = time.perf_counter()
        index.search(query, 10)
        timings.append(time.perf_counter() - started)
    return float(np.median(timings)) / rows


def exact_limit(d: int, target_ms: float) -> int:
    """The largest collection exact search serves within half the latency target."""
    return max(1000, int(target_ms / 2000 / exact_seconds_per_item(d)))


def choose(
    setting: str, n: int, d: int, *, target_ms: float, nprobe: int, exact_up_to: int | None
) -> IndexPlan:
    """The plan for a collection of n vectors under INDEX_FACTORY=`setting`."""
    if setting != AUTO:
        return _explicit(setting, n, d, nprobe)
    limit = exact_up_to if exact_up_to is not None else exact_limit(d, target_ms)
    if n <= limit:
        why = f"exact search serves up to {limit} items in half the {target_ms:g} ms target"
        return IndexPlan(FLAT, 0, n, f"exact: {why}")
    nlist = _nlist(n)
    codes = _codes(d)
    why = (
        f"{n} items are more than the {limit} that exact search serves in half the "
        f"{target_ms:g} ms target; {nlist} lists (about 2*sqrt(n)), {codes} codes, candidates "
        "re-ranked exactly"
    )
    return IndexPlan(f"IVF{nlist},{codes}", nprobe, n, f"approximate: {why}")


def rebuild_reason(plan: IndexPlan, wanted: IndexPlan, n: int) -> str | None:
    """Why a plan no longer suits n vectors (None: it still does)."""
    if plan.factory == wanted.factory:
        return None
    if plan.exact:
        return f"{n} items: approximate search suits them now"
    if n >= GROWTH * max(1, plan.built_for) or GROWTH * n <= plan.built_for:
        return f"the collection went from {plan.built_for} to {n} items since the index was planned"
    return None


def _explicit(factory: str, n: int, d: int, nprobe: int) -> IndexPlan:
    lists = _ivf_lists(factory, d)
    if lists == 0:
        return IndexPlan(factory, 0, n, "INDEX_FACTORY")
    needed = TRAIN_POINTS_PER_LIST * lists
    if n < needed:
        return IndexPlan(
            FLAT, 0, n, f"INDEX_FACTORY {factory}: exact until {needed} vectors to train on"
        )
    return IndexPlan(factory, nprobe, n, "INDEX_FACTORY")


@functools.cache
def _ivf_lists(factory: str, d: int) -> int:
    """The lists of an IVF factory string (0: not IVF). Cached: the builder asks after every
    write, and building a probe index for it is not free."""
    ivf = faiss.try_extract_index_ivf(faiss.index_factory(d, factory))
    return 0 if ivf is None else int(ivf.nlist)


def _nlist(n: int) -> int:
    wanted = 2 * math.sqrt(n)
    nlist = 2 ** round(math.log2(wanted))
    return int(min(nlist, max(16, n // TRAIN_POINTS_PER_LIST), 65536))


def _codes(d: int) -> str:
    """PQ(d/8)x4fs: 4 bits per 8 dimensions, scanned with SIMD (FAISS fast scan). Below 256
    dimensions that is too few bits to find a vector's own neighbours among the candidates,
    and a byte a dimension (SQ8) costs little."""
    if d < 256 or d % 16:
        return "SQ8"
    return f"PQ{d // 8}x4fs"

"""How a filtered search is answered: chosen per query from how many items the filter matches.

A filter that is independent of the clusters (a tenant, an owner, a date bucket) leaves a
query's nearest matches in many different inverted lists: at 1% of a collection of many
small clusters, nine of the true top 10 are strangers scoring about 0, found in no probed
list, and 4-bit codes cannot order such near-ties. So a filtered query takes one of two plans:
- exact: the stored vectors of just the matching items are read and scored (a filter's
  bitmap is built before the search, so its count is known); exact, and cheap while the
  matches are few;
- approximate: the inverted file with the filter's bitmap, with nprobe and the re-rank depth
  that were measured, at build time, to find FILTERED_TARGET_RECALL of the exact filtered top
  10 for filters of that share drawn independently of the vectors (the hard case).
A query takes the step measured at the largest share at or below its own: the approximate
plan where that step held recall for less than the exact scan of the query's matches costs;
otherwise the exact plan. The measured costs put the threshold on this machine's scale.
"""

from dataclasses import dataclass

import numpy as np

FILTER_SHARES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
FILTERED_TARGET_RECALL = 0.97  # on 64 queries: three standard errors over the 0.95 promised
FILTER_TUNING_QUERIES = 64
DEPTH_FACTORS = (1, 2, 4, 8, 16, 32, 48, 64)  # re-rank depths tried: these times the unfiltered one
MIN_TUNED_MATCHES = 200  # below this many matches the exact scan is always the cheaper
MEASURED_K = 10  # recall is measured for the top 10
EXACT = 0  # a step's nprobe when no approximate setting held recall there: the exact scan
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class ShareStep:
    """What holds recall for filters matching `share` of the items (or more)."""

    share: float
    nprobe: int
    depth: int  # candidates re-ranked exactly
    recall: float  # measured recall@10 against exact filtered search
    seconds: float  # measured time of one query


@dataclass(frozen=True)
class FilteredTuning:
    exact_seconds_per_item: float  # the exact plan's cost per matching item (read + score)
    steps: tuple[ShareStep, ...]  # by share, largest first; below the last: exact

    def describe(self, count: int) -> str:
        steps = "; ".join(
            f">= {step.share:g}: exact (no setting held recall for less)"
            if step.nprobe == EXACT
            else f">= {step.share:g}: nprobe {step.nprobe}, {step.depth} re-ranked "
            f"(recall@10 {step.recall:.3f}, {1000 * step.seconds:.1f} ms)"
            for step in self.steps
        )
        return (
            f"exact over the matching items up to {self.exact_up_to(count)} matches "
            f"({1e6 * self.exact_seconds_per_item:.1f} us an item); by share: "
            f"{steps or 'never (no share held recall for less than the exact scan)'}"
        )

    def exact_up_to(self, count: int) -> int:
        """Up to how many matches (of `count` live items) a filtered query is answered
        exactly: the least count that takes the approximate plan, less one."""
        for matching in sorted(
            {int(np.ceil(step.share * count)) for step in self.steps}
            | {int(step.seconds / self.exact_seconds_per_item) + 1 for step in self.steps}
        ):
            if matching <= count and choose_filtered(self, matching, count) is not None:
                return matching - 1
        return count


def choose_filtered(
    tuning: FilteredTuning, matching: int, count: int, k: int = MEASURED_K
) -> ShareStep | None:
    """The approximate step for a filter matching `matching` of `count` live items, asked
    for `k` results, or None for the exact plan. The steps were measured for the top 10:
    asking for k > 10 at a share needs as many neighbours among the matches as the top 10 at
    a share k/10 times smaller, so it is held to that share's step."""
    share = matching / max(1, count) * MEASURED_K / max(MEASURED_K, k)
    below = [step for step in tuning.steps if step.share <= share]
    if not below:
        return None  # sparser than anything measured: exact
    step = below[0]  # the largest measured share at or below this one: the safe side
    if step.nprobe == EXACT or matching * tuning.exact_seconds_per_item <= step.seconds:
        return None
    return step


def tuning_filter(labels: np.ndarray, share: float) -> np.ndarray:
    """Which labels a tuning filter of `share` matches: a hash of the label, so it is
    independent of the vectors, and the filter of a smaller share is inside a larger one."""
    hashed = labels.astype(np.uint64) * _GOLDEN  # wraps modulo 2**64: a multiplicative hash
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53) < share

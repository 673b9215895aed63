"""Scrape the service's /metrics and summarise what changed over one load step."""

import math
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text)


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, pairs), value in samples.items()
        if sample == name and all(dict(pairs).get(k) == v for k, v in labels.items())
    )


@dataclass(frozen=True)
class StepMetrics:
    """Server-side view of one step: deltas between a scrape before and one after."""

    batches: int
    mean_batch_size: float
    batch_size_counts: dict[str, int]  # "1", "2-4", ... (histogram bucket ranges) -> batches
    cache_hit_ratio: float | None  # None when nothing went through the cache
    server_cpu_cores: float  # process CPU seconds per wall second
    rejected: int  # refused with 429: queue full, or past the latency target
    expired: int  # deadline passed in the queue (504)
    server_errors: int  # HTTP 5xx answered


def step_metrics(before: Samples, after: Samples, wall_s: float) -> StepMetrics:
    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    batches = delta("batcher_batch_size_count")
    hits, misses = delta("cache_hits_total"), delta("cache_misses_total")
    return StepMetrics(
        batches=round(batches),
        mean_batch_size=delta("batcher_batch_size_sum") / batches if batches else 0.0,
        batch_size_counts=_bucket_counts(before, after),
        cache_hit_ratio=hits / (hits + misses) if hits + misses else None,
        server_cpu_cores=delta("process_cpu_seconds_total") / wall_s,
        rejected=round(delta("batcher_rejected_total")),  # both reasons
        expired=round(delta("batcher_expired_total")),
        server_errors=round(
            sum(
                after[key] - before.get(key, 0.0)
                for key in after
                if key[0] == "http_requests_total" and dict(key[1]).get("status", "")[:1] == "5"
            )
        ),
    )


def _bucket_counts(before: Samples, after: Samples) -> dict[str, int]:
    """Batches per batch-size range, from the cumulative histogram buckets (of every model
    version: summed by bound)."""
    by_bound: dict[float, float] = {}
    for (name, pairs), value in after.items():
        if name == "batcher_batch_size_bucket":
            bound = float(dict(pairs)["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value - before.get((name, pairs), 0.0)
    cumulative = sorted(by_bound.items())
    counts: dict[str, int] = {}
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count - below > 0:
            if math.isinf(upper):
                label = f">{lower:g}"
            elif upper == lower + 1:
                label = f"{upper:g}"
            else:
                label = f"{lower + 1:g}-{upper:g}"
            counts[label] = round(count - below)
        lower, below = upper, count
    return counts

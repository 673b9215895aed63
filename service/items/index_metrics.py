"""The index's metrics as the HTTP process sees them (the same wherever the index runs: in
this process, an index worker, a Ray replica): search time by model version, and the number
of items, read when /metrics is scraped."""

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class IndexMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._search = Histogram(
            "index_search_seconds",
            "Time of one index search as the route waits for it (in process, or the index "
            "worker's round trip), by model version and kind (search by image, or similar)",
            ["version", "kind"],
            registry=registry,
            buckets=_BUCKETS,
        )
        self._items = Gauge(
            "index_items",
            "Items in the index of a model version (read at each scrape)",
            ["version"],
            registry=registry,
            multiprocess_mode="livemax",
        )

    def searched(self, state: Any, kind: str, seconds: float) -> None:
        """One search by a request whose resolved version is in its `state`."""
        self._search.labels(_version(state), kind).observe(seconds)

    def items(self, version: str, count: int) -> None:
        self._items.labels(version).set(count)


def _version(state: Any) -> str:
    serving = getattr(state, "serving", None)
    return str(getattr(serving, "name", "default"))

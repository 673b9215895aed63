"""Where the model host serves differently from what it was configured to do, and why.

A device that cannot do what was asked of it (decode JPEGs, pin memory, hold the largest
batch, build a candidate backend) must not take requests down with it: the host falls back
to something that works and says so, once in the log, in /readyz's `warnings` for as long as
it lasts, and as a count in /metrics (`model_fallbacks_total{version,kind}`).
"""

import logging
import threading
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter

from batching.metric_families import family

log = logging.getLogger(__name__)


class Fallbacks:
    """Warnings by topic (the latest per topic wins) and fallback counts by kind.

    Written from the model's owner thread and start-up threads, read by /readyz.
    """

    def __init__(self) -> None:
        self._warnings: dict[str, str] = {}
        self._counts: Tally[str] = Tally()
        self._counter: Counter | None = None
        self._version = ""  # the model version whose counts these are, once bound
        self._lock = threading.Lock()

    def warn(self, topic: str, message: str) -> None:
        """Record (and log, when new) why the host serves differently on `topic`."""
        with self._lock:
            if self._warnings.get(topic) == message:
                return
            self._warnings[topic] = message
        log.warning(message)

    def count(self, kind: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[kind] += amount
            if self._counter is not None:
                self._counter.labels(self._version, kind).inc(amount)

    def bind(self, registry: CollectorRegistry, version: str) -> None:
        """Export the counts on `registry`, as model version `version`'s, from now on
        (those so far included)."""
        with self._lock:
            self._counter = family(
                registry,
                Counter,
                "model_fallbacks",
                "Work the model host did another way than configured because the device "
                "could not (kind: jpeg_host_decode, oom_split, pageable_copy)",
                ["version", "kind"],
            )
            self._version = version
            for kind, amount in self._counts.items():
                self._counter.labels(version, kind).inc(amount)

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return list(self._warnings.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

"""The Model replicas' own metrics on the Ingress's /metrics, so one scrape sees them all.

A Model replica's batcher, backend and inspection metrics live in its own process, where no
Prometheus scrapes (Ray's metrics agent exports only Ray's own and `ray.util.metrics`). Each
replica publishes its registry's exposition to one small named actor every
RAY_METRICS_EVERY_S; each Ingress replica reads them back on the same schedule, and its
/metrics serves them under their own names (the dashboard's queries hold as they are), each
series labelled with the `replica` it came from. A replica that stops publishing (replaced,
its node gone) drops out after three periods. The ingress's own process metrics are its own:
the replicas' `process_*` and `python_*` families are left to Ray's per-process metrics.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

BOARD = "resnet-serve-replica-metrics"
_NAMESPACE = "serve"  # where Serve's replicas live, so each finds the same board
_STALE_PERIODS = 3
_OWN_FAMILIES = ("process_", "python_")  # the ingress exports its own process's


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest exposition of every publishing replica."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, bytes]] = {}

    def put(self, replica: str, exposition: bytes) -> None:
        self._latest[replica] = (time.monotonic(), exposition)

    def read(self, max_age_s: float) -> dict[str, bytes]:
        now = time.monotonic()
        for replica in [r for r, (at, _) in self._latest.items() if now - at > max_age_s]:
            del self._latest[replica]
        return {replica: exposition for replica, (_, exposition) in self._latest.items()}


def _board() -> Any:
    """The board, made by whichever replica asks first (detached: it outlives any one)."""
    return MetricsBoard.options(  # type: ignore[attr-defined]
        name=BOARD, namespace=_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


async def publish_forever(registry: CollectorRegistry, replica: str, every_s: float) -> None:
    """Put this replica's metrics on the board every `every_s` (a task of the replica)."""
    board = None
    while True:
        try:
            board = board or _board()
            await board.put.remote(replica, generate_latest(registry))
        except Exception as exc:  # the board's node went away: a new one next time
            log.warning("cannot publish this replica's metrics: %s", exc)
            board = None
        await asyncio.sleep(every_s)


class ReplicaMetrics(Collector):
    """The replicas' published metrics, as one family per name with a `replica` label; read
    from the board on a thread of its own, so a scrape never waits on Ray."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._latest: dict[str, bytes] = {}
        threading.Thread(target=self._follow, name="replica-metrics", daemon=True).start()

    def _follow(self) -> None:
        board = None
        while True:
            try:
                board = board or _board()
                self._latest = ray.get(board.read.remote(_STALE_PERIODS * self._every_s))
            except Exception as exc:
                log.warning("cannot read the replicas' metrics: %s", exc)
                board = None
            time.sleep(self._every_s)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for replica, exposition in sorted(self._latest.items()):
            for family in text_string_to_metric_families(exposition.decode()):
                if family.name.startswith(_OWN_FAMILIES):
                    continue
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                into.samples += [
                    Sample(s.name, s.labels | {"replica": replica}, s.value, s.timestamp)
                    for s in family.samples
                ]
        yield from merged.values()

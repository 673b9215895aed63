"""Metrics across processes: every worker writes its own, any HTTP worker serves the sum.

The supervisor sets PROMETHEUS_MULTIPROC_DIR for its children, so prometheus_client keeps
each process's values in files there; /metrics aggregates them (counters and histograms are
summed, gauges as each declares). process_* figures cover the whole service: the supervisor
and all its workers.
"""

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_registry() -> CollectorRegistry:
    """Where a worker creates its metrics; their values land in the shared directory."""
    return CollectorRegistry()


def exposition_registry(supervisor_pid: int) -> CollectorRegistry:
    """What /metrics serves in a worker: every process's metrics, and the service's CPU."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, os.environ[MULTIPROC_ENV])  # type: ignore[no-untyped-call]
    registry.register(ServiceProcessCollector(supervisor_pid))
    return registry


class ServiceProcessCollector(Collector):
    """CPU seconds, resident memory and process count of the supervisor and its descendants
    (under the usual process_* names, so load reports work the same with or without workers)."""

    def __init__(self, root_pid: int) -> None:
        self._root = root_pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        stats = _process_stats()
        family = _descendants(self._root, {pid: stat[0] for pid, stat in stats.items()})
        cpu = sum(stats[pid][1] for pid in family if pid in stats) / self._ticks
        rss = sum(stats[pid][2] for pid in family if pid in stats) * self._page
        yield GaugeMetricFamily(
            "process_cpu_seconds_total", "CPU seconds of every service process", value=cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of every service process", value=rss
        )
        yield GaugeMetricFamily("service_processes", "Processes of the service", len(family))


def _process_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, user+system ticks, resident pages) from /proc."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) may contain spaces; the fields after it do not.
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[21]),
        )
    return stats


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    family, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            family.add(child)
            todo.append(child)
    return family

"""Triton's per-model statistics (`/v2/models/{m}/stats`, gRPC ModelStatistics): success and
failure counts and times, and where successful requests spent theirs (queue, decode as
compute_input, the forward pass as compute_infer). perf_analyzer reads them. Counted by the
process that answered (with HTTP workers: the worker the request reached)."""

import time
from dataclasses import dataclass, field
from typing import Any

from service.oip.model_face import Answer

_NS_PER_MS = 1_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ms: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(ms * _NS_PER_MS)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStatistics:
    last_inference_ms: int = 0  # since the epoch, as Triton reports it
    inference_count: int = 0  # images answered
    execution_count: int = 0  # images the model ran (not answered from the cache)
    durations: dict[str, Duration] = field(
        default_factory=lambda: {
            name: Duration()
            for name in (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
                "cache_hit",
                "cache_miss",
            )
        }
    )


class ModelStatistics:
    def __init__(self) -> None:
        self._versions: dict[str, VersionStatistics] = {}

    def succeeded(self, version: str, answer: Answer, total_ms: float) -> None:
        stats = self._of(version)
        stats.last_inference_ms = int(time.time() * 1000)
        stats.inference_count += answer.images
        stats.execution_count += answer.images - answer.cache_hits
        durations = stats.durations
        durations["success"].add(total_ms)
        durations["queue"].add(answer.queue_ms)
        durations["compute_input"].add(answer.decode_ms)
        durations["compute_infer"].add(answer.inference_ms)
        durations["compute_output"].add(0.0)
        for timings in answer.timings:
            kind = "cache_hit" if "cache" in timings else "cache_miss"
            durations[kind].add(timings.get("cache", timings.get("total", 0.0)))

    def failed(self, version: str, total_ms: float) -> None:
        self._of(version).durations["fail"].add(total_ms)

    def as_json(self, name: str, versions: list[str]) -> dict[str, Any]:
        return {
            "model_stats": [
                {
                    "name": name,
                    "version": version,
                    "last_inference": stats.last_inference_ms,
                    "inference_count": stats.inference_count,
                    "execution_count": stats.execution_count,
                    "inference_stats": {k: d.as_json() for k, d in stats.durations.items()},
                    "batch_stats": [],
                }
                for version in versions
                for stats in [self._versions.get(version, VersionStatistics())]
            ]
        }

    def _of(self, version: str) -> VersionStatistics:
        return self._versions.setdefault(version, VersionStatistics())

"""Read locust's CSV results and write the markdown summary of a `loadtest/run`."""

import csv
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from loadtest.common.scrape import StepMetrics


@dataclass(frozen=True)
class RequestStats:
    name: str  # locust's request name; "Aggregated" for all of them
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class StepResult:
    label: str  # "8 users", "burst"
    seconds: float
    total: RequestStats
    by_request: list[RequestStats]
    failures: list[str]  # "count x name: message" from locust's failures CSV
    server: StepMetrics
    locust_cpu_cores: float
    locust_exit_code: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_locust_stats(prefix: Path) -> tuple[RequestStats, list[RequestStats]]:
    """The Aggregated row and the per-request rows of `<prefix>_stats.csv`."""
    rows = [_request_stats(row) for row in _csv_rows(Path(f"{prefix}_stats.csv"))]
    total = next((r for r in rows if r.name == "Aggregated"), None)
    if total is None:
        raise RuntimeError(f"{prefix}_stats.csv has no Aggregated row (did locust run?)")
    return total, [r for r in rows if r.name != "Aggregated"]


def read_locust_failures(prefix: Path) -> list[str]:
    path = Path(f"{prefix}_failures.csv")
    if not path.exists():
        return []
    return [
        f"{row['Occurrences']} x {row['Method']} {row['Name']}: {row['Error']}"
        for row in _csv_rows(path)
    ]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _request_stats(row: dict[str, str]) -> RequestStats:
    def number(column: str) -> float:
        value = row.get(column, "")
        return float(value) if value not in ("", "N/A") else 0.0

    return RequestStats(
        name=row["Name"],
        requests=int(number("Request Count")),
        failures=int(number("Failure Count")),
        rps=number("Requests/s"),
        p50_ms=number("50%"),
        p95_ms=number("95%"),
        p99_ms=number("99%"),
    )


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {psutil.cpu_count()} logical CPUs, {memory_gib:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def markdown(
    title: str,
    command: str,
    service: dict[str, Any],
    config: dict[str, str],
    steps: list[StepResult],
) -> str:
    settings = ", ".join(f"{key}={value}" for key, value in sorted(config.items()))
    lines = [
        f"# {title}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_description()} (load generator on the same machine)",
        f"- Service: model `{service.get('model')}`, weights `{service.get('weights')}`, "
        f"backend `{service.get('backend')}`, max batch {service.get('max_batch_size')}",
        f"- Configuration: {settings or 'defaults'}",
        "",
        "| load | requests | rps | p50 ms | p95 ms | p99 ms | errors | mean batch "
        "| batches by size | cache hits | server CPU | locust CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for step in steps:
        t, s = step.total, step.server
        sizes = " ".join(f"{size}:{count}" for size, count in s.batch_size_counts.items())
        hits = "-" if s.cache_hit_ratio is None else f"{s.cache_hit_ratio:.0%}"
        lines.append(
            f"| {step.label} | {t.requests} | {t.rps:.1f} | {t.p50_ms:.0f} | {t.p95_ms:.0f} "
            f"| {t.p99_ms:.0f} | {t.failures} | {s.mean_batch_size:.1f} | {sizes or '-'} "
            f"| {hits} | {s.server_cpu_cores:.2f} | {step.locust_cpu_cores:.2f} |"
        )
    lines += [
        "",
        "CPU columns are cores in use (CPU seconds per second). Errors are failed requests: "
        "a non-2xx status, or a body that failed the content checks.",
        "",
        "## By request",
        "",
        "| load | request | requests | rps | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for step in steps:
        for r in step.by_request:
            lines.append(
                f"| {step.label} | {r.name} | {r.requests} | {r.rps:.1f} | {r.p50_ms:.0f} "
                f"| {r.p95_ms:.0f} | {r.p99_ms:.0f} | {r.failures} |"
            )
    failures = [f"- {step.label}: {failure}" for step in steps for failure in step.failures]
    if failures:
        lines += ["", "## Failures", "", *failures]
    return "\n".join(lines) + "\n"

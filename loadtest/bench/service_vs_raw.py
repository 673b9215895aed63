"""Service throughput as a share of raw model throughput, and idle latency, in one run.

    python -m loadtest.bench.service_vs_raw --weights random --concurrency 32 --seconds 60
    python -m loadtest.bench.service_vs_raw --weights random --workers 2 ...   # the process split
    python -m loadtest.bench.service_vs_raw --weights random --precision fp16 --max-batch-size 256 \
        --workers 12 --concurrency 256 --processes 4 --seconds 60        # one H100, 16 cores

Times the decode + preprocess of the load's JPEGs, starts the service (same settings) on a
free loopback port, then runs --repeats rounds of: the raw in-process benchmark at the
service's max batch size, the service loaded with unique 500-px JPEGs (throughput at
--concurrency), the raw benchmark again; then the raw batch-1 forward, the service at one
client (p50), and the batch-1 forward again. A machine's speed drifts, so each service phase
is compared with the mean of the two raw runs around it, and the targets are judged on the
medians over the rounds. The idle-latency bound is decode + one batch-1 forward + 3 ms.

    python -m loadtest.bench.service_vs_raw --weights random --workers 2 --repeats 5 --seconds 30
"""

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from loadtest.bench.gpu_utilisation import GpuUtilisation
from loadtest.common.images import unique_jpegs
from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, start_service, stop


def raw_images_per_second(env: dict[str, str], batch_size: int, seconds: float) -> float:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench.bench_model",
            "--batch-sizes",
            str(batch_size),
            "--seconds",
            str(seconds),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # last table row: | backend | precision | batch | img/s | share |
    return float(finished.stdout.strip().splitlines()[-1].split("|")[4])


def decode_ms(env: dict[str, str], images: int = 200) -> float:
    """Mean decode + resize + crop of the load's JPEGs on one thread, as the service does it
    for the configured model (its own preprocessing config)."""
    finished = subprocess.run(
        [sys.executable, "-m", "loadtest.bench.service_vs_raw", "--decode-only", str(images)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(finished.stdout.strip().splitlines()[-1])


def _print_decode_ms(images: int) -> None:
    from service.model.runtime import load_parts
    from service.settings import Settings

    preprocessor = load_parts(Settings(**{})).preprocessor  # the environment, as served
    jpegs = unique_jpegs(tag="decode")
    batch = [next(jpegs) for _ in range(images)]
    started = time.perf_counter()
    for data in batch:
        preprocessor(data)
    print(1000 * (time.perf_counter() - started) / images)


def describe(name: str, result: LoadResult) -> str:
    return (
        f"{name}, {result.concurrency} clients: {result.ok_rps:.2f} rps, "
        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, {result.statuses}"
    )


@dataclass(frozen=True)
class Repeat:
    """One round: each service phase between two raw runs of its own (a machine's speed
    drifts, so the service is compared with the raw runs around it)."""

    raw_before: float  # img/s at the max batch size, around the loaded phase
    raw_after: float
    service_rps: float
    single_before_ms: float  # one batch-1 forward, around the idle phase
    single_after_ms: float
    idle_p50_ms: float

    @property
    def share(self) -> float:
        return self.service_rps / ((self.raw_before + self.raw_after) / 2)

    def bound_ms(self, decode: float) -> float:
        return decode + (self.single_before_ms + self.single_after_ms) / 2 + 3


def summary(repeats: list[Repeat], decode: float) -> list[str]:
    """A table row per repeat, then the medians the targets are judged on."""
    rows = [
        "| round | raw img/s before / after | service rps | share "
        "| batch-1 ms before / after | p50 1 client | bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(repeats, 1):
        rows.append(
            f"| {i} | {r.raw_before:.1f} / {r.raw_after:.1f} | {r.service_rps:.1f} | "
            f"{r.share:.1%} | {r.single_before_ms:.1f} / {r.single_after_ms:.1f} | "
            f"{r.idle_p50_ms:.1f} ms | {r.bound_ms(decode):.1f} ms |"
        )
    share = statistics.median(r.share for r in repeats)
    p50 = statistics.median(r.idle_p50_ms for r in repeats)
    bound = statistics.median(r.bound_ms(decode) for r in repeats)
    rows.append(f"median service / raw = {share:.1%} (target >= 95%)")
    rows.append(f"median p50 at 1 client = {p50:.1f} ms; median bound = {bound:.1f} ms")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS for both runs")
    parser.add_argument("--backend", default="torch", help="RESNET_SERVE_BACKEND for both runs")
    parser.add_argument("--precision", default="fp32", help="RESNET_SERVE_PRECISION for both")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="RESNET_SERVE_WORKERS")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1, help="load processes")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved raw / service rounds (medians)"
    )
    parser.add_argument("--decode-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.decode_only:  # in a subprocess, with the service's environment
        _print_decode_ms(args.decode_only)
        return
    env = os.environ | {
        "RESNET_SERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "RESNET_SERVE_BACKEND": args.backend,
        "RESNET_SERVE_PRECISION": args.precision,
        "RESNET_SERVE_WORKERS": str(args.workers),
    }
    if args.weights:
        env["RESNET_SERVE_WEIGHTS"] = args.weights
    raw_seconds = args.seconds / 2
    decode = decode_ms(env)
    print(f"decode + preprocess: {decode:.1f} ms", flush=True)

    def raw(batch_size: int, seconds: float) -> float:
        speed = raw_images_per_second(env, batch_size, seconds)
        print(f"raw batch {batch_size}: {speed:.2f} img/s", flush=True)
        return speed

    port = free_port()
    # One service for every round: it idles (no CPU) while the raw benchmark runs.
    service = start_service(env, port)
    classify = functools.partial(measure_load, f"http://127.0.0.1:{port}", "/v1/classify")
    repeats: list[Repeat] = []
    try:
        for round_number in range(1, args.repeats + 1):
            print(f"round {round_number}", flush=True)
            before = raw(args.max_batch_size, raw_seconds)
            with GpuUtilisation() as gpu:
                loaded = classify(args.concurrency, args.seconds, 5.0, processes=args.processes)
            print(describe(f"service ({args.workers} workers)", loaded), flush=True)
            print(gpu.summary(), flush=True)
            after = raw(args.max_batch_size, raw_seconds)
            single_before = 1000 / raw(1, raw_seconds / 2)
            idle = classify(1, min(args.seconds, 30), 2.0)
            print(describe("service idle", idle), flush=True)
            single_after = 1000 / raw(1, raw_seconds / 2)
            repeats.append(
                Repeat(before, after, loaded.ok_rps, single_before, single_after, idle.p50_ms)
            )
    finally:
        stop(service)
    print("\n".join(summary(repeats, decode)))


if __name__ == "__main__":
    main()

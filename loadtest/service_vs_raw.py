"""Service throughput as a share of raw model throughput, and idle latency, in one run.

    python -m loadtest.service_vs_raw --weights random --concurrency 32 --seconds 60
    python -m loadtest.service_vs_raw --weights random --workers 2 ...   # the process split
    python -m loadtest.service_vs_raw --weights random --precision fp16 --max-batch-size 256 \
        --workers 12 --concurrency 256 --processes 4 --seconds 60        # one H100, 16 cores

Runs the raw in-process benchmark at the service's max batch size and at batch 1, times the
decode + preprocess of the load's JPEGs, then starts the service (same settings) on a free
loopback port and loads it with unique 500-px JPEGs (throughput at --concurrency, p50 at one
client), then runs the raw benchmark again. This machine's speed drifts between runs, so the
ratio uses the mean of the two raw figures around the service run. The idle-latency bound is
decode + one batch-1 forward + 3 ms.
"""

import argparse
import os
import subprocess
import sys
import time

from loadtest.gpu_utilisation import GpuUtilisation
from loadtest.images import unique_jpegs
from loadtest.load import LoadResult, measure_load
from loadtest.processes import free_port, start_service, stop


def raw_images_per_second(env: dict[str, str], batch_size: int, seconds: float) -> float:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench_model",
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
        [sys.executable, "-m", "loadtest.service_vs_raw", "--decode-only", str(images)],
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
    parser.add_argument("--decode-only", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
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
    before = raw_images_per_second(env, args.max_batch_size, raw_seconds)
    print(f"raw batch {args.max_batch_size} before: {before:.2f} img/s", flush=True)
    single_ms = 1000 / raw_images_per_second(env, 1, raw_seconds / 2)
    decode = decode_ms(env)
    print(f"raw batch 1 forward: {single_ms:.1f} ms; decode + preprocess: {decode:.1f} ms")
    port = free_port()
    service = start_service(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        with GpuUtilisation() as gpu:
            loaded = measure_load(
                url, "/v1/classify", args.concurrency, args.seconds, 5.0, processes=args.processes
            )
        print(describe(f"service ({args.workers} workers)", loaded), flush=True)
        print(gpu.summary(), flush=True)
        idle = measure_load(url, "/v1/classify", 1, min(args.seconds, 30), 2.0)
        print(describe("service idle", idle), flush=True)
    finally:
        stop(service)
    after = raw_images_per_second(env, args.max_batch_size, raw_seconds)
    print(f"raw batch {args.max_batch_size} after: {after:.2f} img/s")
    raw = (before + after) / 2
    print(f"service / raw = {loaded.ok_rps / raw:.1%} (target >= 95%)")
    bound = decode + single_ms + 3
    print(f"p50 at 1 client = {idle.p50_ms:.1f} ms; bound decode + batch-1 + 3 ms = {bound:.1f} ms")


if __name__ == "__main__":
    main()

"""Service throughput as a share of raw model throughput, measured back to back.

    python -m loadtest.service_vs_raw --weights random --concurrency 32 --seconds 60

Runs the raw in-process benchmark at the service's max batch size, then starts the service
(same settings) on a free loopback port and loads it with unique 500-px JPEGs, then runs the
raw benchmark again. This machine's speed drifts between runs, so the ratio uses the mean of
the two raw figures around the service run.
"""

import argparse
import asyncio
import os
import subprocess
import sys

from loadtest.load import run_load
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS for both runs")
    parser.add_argument("--backend", default="torch", help="RESNET_SERVE_BACKEND for both runs")
    parser.add_argument("--precision", default="fp32", help="RESNET_SERVE_PRECISION for both")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    env = os.environ | {
        "RESNET_SERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "RESNET_SERVE_BACKEND": args.backend,
        "RESNET_SERVE_PRECISION": args.precision,
    }
    if args.weights:
        env["RESNET_SERVE_WEIGHTS"] = args.weights
    raw_seconds = args.seconds / 2
    before = raw_images_per_second(env, args.max_batch_size, raw_seconds)
    print(f"raw batch {args.max_batch_size} before: {before:.2f} img/s", flush=True)
    port = free_port()
    service = start_service(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        result = asyncio.run(run_load(url, "/v1/classify", args.concurrency, args.seconds, 5.0))
    finally:
        stop(service)
    print(
        f"service, {args.concurrency} clients: {result.ok_rps:.2f} rps, "
        f"p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, {result.statuses}",
        flush=True,
    )
    after = raw_images_per_second(env, args.max_batch_size, raw_seconds)
    print(f"raw batch {args.max_batch_size} after: {after:.2f} img/s")
    raw = (before + after) / 2
    print(f"service / raw = {result.ok_rps / raw:.1%}")


if __name__ == "__main__":
    main()

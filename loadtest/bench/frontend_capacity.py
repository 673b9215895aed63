"""Frontend capacity: cache hits per second, and server CPU per hit, by HTTP worker count.

    python -m loadtest.bench.frontend_capacity --workers 1 2 --concurrency 64 --seconds 30
    python -m loadtest.bench.frontend_capacity --workers 1 8 --processes 4   # a 16-core machine

Keeps the model out of the way: every request sends the same image, so after the first one
the in-process cache of each worker answers (no Redis: each worker has its own). For each
worker count it starts the service on a free loopback port, warms every worker's cache, loads
it, and reads the server's CPU seconds (all its processes) from /metrics before and after.
"""

import argparse
import os
import time

import httpx

from loadtest.common.images import base_jpegs
from loadtest.common.load import measure_load
from loadtest.common.processes import free_port, start_service, stop
from loadtest.common.scrape import scrape, step_metrics


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1, help="load processes")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--weights", default="random", help="RESNET_SERVE_WEIGHTS")
    args = parser.parse_args()
    print(
        "| workers | clients | hits/s | p50 ms | p99 ms | server CPU cores | CPU ms per hit |"
        " statuses |\n|---|---|---|---|---|---|---|---|"
    )
    for workers in args.workers:
        env = os.environ | {
            "RESNET_SERVE_WORKERS": str(workers),
            "RESNET_SERVE_WEIGHTS": args.weights,
            "RESNET_SERVE_BACKEND": "torch",
            "RESNET_SERVE_PRECISION": "fp32",
            "RESNET_SERVE_MAX_BATCH_SIZE": "8",
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        service = start_service(env, port)
        try:
            image = base_jpegs()[0]
            for _ in range(20 * workers):  # every worker computes and caches the image once
                httpx.post(f"{url}/v1/classify", files={"file": ("x.jpg", image)}, timeout=60)
            before, started = scrape(url), time.monotonic()
            result = measure_load(
                url,
                "/v1/classify",
                args.concurrency,
                args.seconds,
                3,
                repeat=True,
                processes=args.processes,
            )
            step = step_metrics(before, scrape(url), time.monotonic() - started)
        finally:
            stop(service)
        cpu_ms = 1000 * step.server_cpu_cores / result.ok_rps if result.ok_rps else float("nan")
        print(
            f"| {workers} | {args.concurrency} | {result.ok_rps:.0f} | {result.p50_ms:.1f} | "
            f"{result.p99_ms:.1f} | {step.server_cpu_cores:.2f} | {cpu_ms:.2f} | "
            f"{result.statuses} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

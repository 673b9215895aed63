"""Latency target under overload: accepted p99, refusal speed, accepted throughput.

    python -m loadtest.bench.slo --weights random --target-ms 1000 --concurrency 64 --seconds 60

Starts the service (torch fp32, batch 8 unless told otherwise) with RESNET_SERVE_TARGET_LATENCY_MS
on a free loopback port and loads it twice with unique 500-px JPEGs:
1. saturated: two batches' worth of clients, enough to keep the model busy without the
   backlog reaching the target: the saturated rate;
2. overloaded: --concurrency clients, each waiting out a 429's Retry-After (plus up to half of
   it again, jitter) as a well-behaved client does.
Targets: p99 of accepted requests <= the target, refusals answered in < 10 ms, accepted
throughput within 5% of the saturated rate.
"""

import argparse
import os

from loadtest.bench.service_vs_raw import describe
from loadtest.common.load import measure_load
from loadtest.common.processes import free_port, start_service, stop
from loadtest.common.scrape import scrape, step_metrics

REFUSAL_BOUND_MS = 10.0
THROUGHPUT_SHARE = 0.95


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="RESNET_SERVE_WORKERS")
    parser.add_argument("--target-ms", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1, help="load processes")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    env = os.environ | {
        "RESNET_SERVE_BACKEND": args.backend,
        "RESNET_SERVE_PRECISION": args.precision,
        "RESNET_SERVE_MAX_BATCH_SIZE": str(args.max_batch_size),
        "RESNET_SERVE_WORKERS": str(args.workers),
        "RESNET_SERVE_TARGET_LATENCY_MS": str(args.target_ms),
        "RESNET_SERVE_UI": "false",
    }
    if args.weights:
        env["RESNET_SERVE_WEIGHTS"] = args.weights
    port = free_port()
    service = start_service(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        saturating = 2 * args.max_batch_size
        saturated = measure_load(
            url, "/v1/classify", saturating, args.seconds, 5.0, processes=args.processes
        )
        print(describe("saturated", saturated), flush=True)
        before = scrape(url)
        overloaded = measure_load(
            url,
            "/v1/classify",
            args.concurrency,
            args.seconds,
            5.0,
            processes=args.processes,
            back_off=True,
        )
        print(describe("overloaded", overloaded), flush=True)
        after = scrape(url)
        step = step_metrics(before, after, args.seconds + 5)
        print(
            f"overloaded step at the server: mean batch {step.mean_batch_size:.2f}, "
            f"{step.server_cpu_cores:.2f} cores, {step.rejected} refused by the model's queue",
            flush=True,
        )
    finally:
        stop(service)
    share = overloaded.ok_rps / saturated.ok_rps
    checks = [
        (
            f"accepted p99 {overloaded.p99_ms:.0f} ms <= target {args.target_ms:.0f} ms",
            overloaded.p99_ms <= args.target_ms,
        ),
        (
            f"refusals: {overloaded.statuses.get('429', 0)}, p99 {overloaded.refused_p99_ms:.1f} "
            f"ms, max {overloaded.refused_max_ms:.1f} ms; p99 < {REFUSAL_BOUND_MS:.0f} ms",
            overloaded.refused_p99_ms < REFUSAL_BOUND_MS,
        ),
        (
            f"accepted {overloaded.ok_rps:.1f} rps = {share:.1%} of saturated "
            f"{saturated.ok_rps:.1f} rps; >= {THROUGHPUT_SHARE:.0%}",
            share >= THROUGHPUT_SHARE,
        ),
    ]
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'} {line}")


if __name__ == "__main__":
    main()

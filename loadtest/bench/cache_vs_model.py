"""Cache benefit: repeated-image throughput against unique-image throughput on one server.

    python -m loadtest.bench.cache_vs_model --weights random --seconds 30

Starts a throwaway redis-server and the service with RESNET_SERVE_REDIS_URL pointing at it,
then loads it with unique 500-px JPEGs (every request runs the model) and with one repeated
JPEG (every request after the first is a cache hit).
"""

import argparse
import os

from loadtest.common.load import measure_load
from loadtest.common.processes import free_port, start_redis, start_service, stop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--unique-clients", type=int, default=32)
    parser.add_argument("--repeat-clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    redis = start_redis(redis_port)
    env = os.environ | {"RESNET_SERVE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
    if args.weights:
        env["RESNET_SERVE_WEIGHTS"] = args.weights
    try:
        service = start_service(env, port)
        try:
            url = f"http://127.0.0.1:{port}"
            unique = measure_load(url, "/v1/classify", args.unique_clients, args.seconds, 5)
            repeat = measure_load(
                url, "/v1/classify", args.repeat_clients, args.seconds, 2, repeat=True
            )
        finally:
            stop(service)
    finally:
        stop(redis)
    print("| load | clients | ok rps | p50 ms | p99 ms | statuses |\n|---|---|---|---|---|---|")
    for name, result in (("unique images (model)", unique), ("repeated image (Redis hit)", repeat)):
        print(
            f"| {name} | {result.concurrency} | {result.ok_rps:.1f} | {result.p50_ms:.1f} | "
            f"{result.p99_ms:.1f} | {result.statuses} |"
        )
    print(f"hit / miss throughput = {repeat.ok_rps / unique.ok_rps:.1f}x")


if __name__ == "__main__":
    main()

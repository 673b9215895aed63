"""Closed-loop HTTP load: N clients each send one request at a time for a fixed duration.

    python -m loadtest.load --url http://127.0.0.1:8000 --concurrency 32 --seconds 60

Every request carries a unique 500-px JPEG (see loadtest.images). Prints throughput of
successful responses, latency percentiles and every status seen. Only loopback URLs.
"""

import argparse
import asyncio
import itertools
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlparse

from loadtest.http_client import Connection, multipart_request
from loadtest.images import base_jpegs, unique_jpegs


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    ok_rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]


async def run_load(
    url: str, path: str, concurrency: int, seconds: float, warmup_s: float, repeat: bool = False
) -> LoadResult:
    """Closed-loop load; `repeat` sends one image again and again (cache hits), else unique ones."""
    images = itertools.repeat(base_jpegs()[0]) if repeat else unique_jpegs()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds

    async def client() -> None:
        connection = Connection(url)
        try:
            while (sent := time.perf_counter()) < stop_at:
                request = multipart_request(connection.host, path, "file", "x.jpg", next(images))
                try:
                    code, _ = await connection.send(request)
                    status = str(code)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    status = type(exc).__name__
                if sent >= measure_from:  # only requests started inside the window count
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(time.perf_counter() - sent)
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    ok = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100) if ok > 1 else [float("nan")] * 99
    return LoadResult(
        concurrency, ok / seconds, 1000 * quantiles[49], 1000 * quantiles[98], dict(statuses)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--path", default="/v1/classify")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--repeat", action="store_true", help="the same image every request")
    args = parser.parse_args()
    host = urlparse(args.url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        parser.error("load is only sent to loopback addresses")
    print("| clients | ok rps | p50 ms | p99 ms | statuses |\n|---|---|---|---|---|")
    for concurrency in args.concurrency:
        result = asyncio.run(
            run_load(args.url, args.path, concurrency, args.seconds, args.warmup, args.repeat)
        )
        print(
            f"| {concurrency} | {result.ok_rps:.2f} | {result.p50_ms:.0f} | "
            f"{result.p99_ms:.0f} | {result.statuses} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

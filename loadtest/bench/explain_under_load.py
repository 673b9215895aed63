"""Classify latency with and without a burst of explanations beside it.

    python -m loadtest.bench.explain_under_load --classify-clients 8 --explain-clients 16 \
        --seconds 30

Starts the service on a free loopback port, loads it with unique-image classify requests
alone, then again while `--explain-clients` clients ask for Grad-CAM explanations of unique
images (no cache can answer them). Reports classify throughput and percentiles in both
phases, what the explanations got (answered, or shed with 429; never a 5xx), and the server's
CPU use, so a rise in classify p99 can be set against the extra CPU work.
"""

import argparse
import asyncio
import os
import statistics
import threading
import time
from collections import Counter

import httpx

from loadtest.common.images import unique_jpegs
from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, start_service, stop
from loadtest.common.scrape import scrape, step_metrics


def explain_clients(url: str, clients: int, seconds: float) -> tuple[Counter[str], list[float]]:
    """Closed-loop explain requests; statuses and latencies of the answered ones."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    images = unique_jpegs(tag="explain")
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while time.monotonic() < stop_at:
                sent = time.perf_counter()
                response = await http.post(
                    f"{url}/v1/explain", files={"file": ("x.jpg", next(images), "image/jpeg")}
                )
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                elif response.status_code == 429:  # shed: come back when told to
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    async def all_clients() -> None:
        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(all_clients())
    return statuses, latencies


def phase(
    url: str, clients: int, seconds: float, explainers: int
) -> tuple[LoadResult, float, Counter[str], list[float]]:
    before, started = scrape(url), time.monotonic()
    outcome: dict[str, tuple[Counter[str], list[float]]] = {}
    side = threading.Thread(
        target=lambda: outcome.setdefault("explain", explain_clients(url, explainers, seconds + 3))
    )
    if explainers:
        side.start()
    result = measure_load(url, "/v1/classify", clients, seconds, 3.0)
    if explainers:
        side.join()
    cores = step_metrics(before, scrape(url), time.monotonic() - started).server_cpu_cores
    statuses, latencies = outcome.get("explain", (Counter(), []))
    return result, cores, statuses, latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", default="random", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--classify-clients", type=int, default=8)
    parser.add_argument("--explain-clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    env = os.environ | {
        "RESNET_SERVE_WEIGHTS": args.weights,
        "RESNET_SERVE_BACKEND": os.environ.get("RESNET_SERVE_BACKEND", "torch"),
        "RESNET_SERVE_PRECISION": os.environ.get("RESNET_SERVE_PRECISION", "fp32"),
        "RESNET_SERVE_MAX_BATCH_SIZE": os.environ.get("RESNET_SERVE_MAX_BATCH_SIZE", "8"),
    }
    port = free_port()
    service = start_service(env, port)
    url = f"http://127.0.0.1:{port}"
    try:
        print(
            "| phase | classify rps | p50 ms | p99 ms | server CPU cores | explain statuses |"
            " explain p50 s |\n|---|---|---|---|---|---|---|"
        )
        for name, explainers in (
            ("classify alone", 0),
            ("with explanations", args.explain_clients),
        ):
            result, cores, statuses, latencies = phase(
                url, args.classify_clients, args.seconds, explainers
            )
            explain_p50 = f"{statistics.median(latencies):.2f}" if latencies else "-"
            print(
                f"| {name} | {result.ok_rps:.1f} | {result.p50_ms:.0f} | {result.p99_ms:.0f} | "
                f"{cores:.2f} | {dict(statuses) or '-'} | {explain_p50} |",
                flush=True,
            )
    finally:
        stop(service)


if __name__ == "__main__":
    main()

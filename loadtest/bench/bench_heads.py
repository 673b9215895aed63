"""What attached task heads cost (issue 39): throughput and one-client latency with four heads
(10, 100, 500 and 1,000 classes) against none, on one service, in interleaved rounds.

    python -m loadtest.bench.bench_heads --weights random --clients 16 --seconds 20 --rounds 2

The service (torch fp32, batch 8, no result cache) answers /v1/classify with unique JPEGs; the
heads are random linear layers on the live model's embedding (loadtest.common.synthetic_head),
attached and removed through the API between rounds, so both conditions share the process,
its warm-up and the machine's drift. Targets: throughput with heads >= 0.98 of without; the
one-client p50 within +1 ms.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx

from loadtest.common.load import measure_load
from loadtest.common.processes import fp32_batch8_env, free_port, start_service, stop
from loadtest.common.synthetic_head import write_head

SIZES = (10, 100, 500, 1000)


def attach(url: str, heads: list[Path]) -> None:
    for path in heads:
        answer = httpx.put(f"{url}/v1/heads/{path.name}", json={"source": str(path)}, timeout=60)
        answer.raise_for_status()


def detach(url: str, heads: list[Path]) -> None:
    for path in heads:
        httpx.delete(f"{url}/v1/heads/{path.name}", timeout=60).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    env = fp32_batch8_env(args.weights)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, list[tuple[float, float]]] = {"none": [], "4 heads": []}
    with tempfile.TemporaryDirectory() as work:
        service = start_service(env | {"RESNET_SERVE_DATA_DIR": work}, port)
        try:
            ready = httpx.get(f"{url}/readyz", timeout=30).json()
            heads = [
                write_head(
                    Path(work) / f"h{size}",
                    classes=size,
                    dim=ready["embedding_dim"],
                    base_fingerprint=ready["fingerprint"],
                    seed=size,
                )
                for size in SIZES
            ]
            for round_number in range(args.rounds):
                for condition in ("none", "4 heads"):
                    if condition == "4 heads":
                        attach(url, heads)
                    loaded = measure_load(url, "/v1/classify", args.clients, args.seconds, 3.0)
                    alone = measure_load(url, "/v1/classify", 1, args.seconds / 2, 2.0)
                    figures[condition].append((loaded.ok_rps, alone.p50_ms))
                    if condition == "4 heads":
                        detach(url, heads)
                    print(
                        f"round {round_number + 1}, {condition}: {loaded.ok_rps:.2f}/s at "
                        f"{args.clients} clients, one client p50 {alone.p50_ms:.1f} ms",
                        flush=True,
                    )
        finally:
            stop(service)
    none_rps = statistics.median(r for r, _ in figures["none"])
    heads_rps = statistics.median(r for r, _ in figures["4 heads"])
    none_p50 = statistics.median(p for _, p in figures["none"])
    heads_p50 = statistics.median(p for _, p in figures["4 heads"])
    share = heads_rps / none_rps
    print(f"{'PASS' if share >= 0.98 else 'FAIL'} throughput with 4 heads {share:.3f}x; >= 0.98")
    print(
        f"{'PASS' if heads_p50 - none_p50 <= 1.0 else 'FAIL'} one-client p50 "
        f"{heads_p50:.1f} ms vs {none_p50:.1f} ms; within +1 ms"
    )


if __name__ == "__main__":
    main()

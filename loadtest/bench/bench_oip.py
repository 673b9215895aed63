"""The inference protocol against /v1, in the same run, with Triton's own asyncio clients.

    python -m loadtest.bench.bench_oip --clients 16 --seconds 20 --rounds 3

Starts the service (ResNet50 with random weights, torch fp32, the gRPC face on a free port)
unless --url and --grpc are given, then in interleaved rounds drives, with unique 500-px
JPEGs each: `/v1/classify` multipart (the project's load generator, loadtest.common.load),
gRPC ModelInfer (`tritonclient.grpc.aio`, the JPEG as BYTES in raw_input_contents) and REST
`/v2/.../infer` with the binary extension (`tritonclient.http.aio`), each with --clients
closed-loop clients for --seconds, then one client alone. Reports what perf_analyzer
reports: throughput, p50/p90/p99, and the server's queue and compute time per request from
the model's statistics (`/v2/models/NAME/stats`), and the median over rounds of each
protocol's throughput and one-client p50 against /v1's.

perf_analyzer itself, where it runs (glibc >= 2.38), measures the same endpoints:
    perf_analyzer -m resnet-serve -i grpc -u 127.0.0.1:8001 --input-data jpegs.json \\
        --shape IMAGE:1 --concurrency-range 16 --measurement-interval 20000
"""

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from loadtest.common.images import unique_jpegs
from loadtest.common.load import measure_load
from loadtest.common.processes import free_port, service_at
from loadtest.common.report import machine_description

MODEL = "resnet-serve"
RESNET50_ENV = {
    "RESNET_SERVE_MODEL": "resnet50.fb_swsl_ig1b_ft_in1k",
    "RESNET_SERVE_WEIGHTS": "random",
    "RESNET_SERVE_BACKEND": "torch",
    "RESNET_SERVE_PRECISION": "fp32",
    "RESNET_SERVE_UI": "false",
}


@dataclass(frozen=True)
class Figures:
    protocol: str
    clients: int
    ok_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    queue_ms: float = float("nan")  # the server's, per request (from /stats)
    compute_ms: float = float("nan")


async def closed_loop(
    send: Callable[[bytes], Awaitable[None]], clients: int, seconds: float, tag: str
) -> tuple[list[float], int]:
    """Latencies of the successful calls, and the count of failed ones."""
    images = unique_jpegs(tag=tag)
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            try:
                await send(next(images))
            except Exception:  # counted, not fatal: the figure says how many
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


async def grpc_sender(address: str) -> tuple[Callable[[bytes], Awaitable[None]], Any]:
    import tritonclient.grpc.aio as grpc_aio
    from tritonclient.grpc import InferInput, InferRequestedOutput

    client = grpc_aio.InferenceServerClient(address)
    wanted = [InferRequestedOutput("PROBABILITIES", class_count=5)]

    async def send(image: bytes) -> None:
        tensor = InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        await client.infer(MODEL, [tensor], outputs=wanted)

    return send, client


async def rest_sender(url: str) -> tuple[Callable[[bytes], Awaitable[None]], Any]:
    import tritonclient.http.aio as http_aio
    from tritonclient.http import InferInput, InferRequestedOutput

    client = http_aio.InferenceServerClient(url.removeprefix("http://"), conn_limit=256)
    wanted = [InferRequestedOutput("PROBABILITIES", binary_data=True, class_count=5)]

    async def send(image: bytes) -> None:
        tensor = InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_), binary_data=True)
        await client.infer(MODEL, [tensor], outputs=wanted)

    return send, client


def server_times(url: str) -> tuple[int, int, int]:
    """(requests, queue ns, compute ns) so far, all versions, from the model's statistics."""
    stats = httpx.get(f"{url}/v2/models/{MODEL}/stats", timeout=30).json()["model_stats"]
    totals = [0, 0, 0]
    for version in stats:
        inference = version["inference_stats"]
        totals[0] += inference["success"]["count"]
        totals[1] += inference["queue"]["ns"]
        totals[2] += inference["compute_input"]["ns"] + inference["compute_infer"]["ns"]
    return totals[0], totals[1], totals[2]


def protocol_round(
    protocol: str, url: str, grpc_address: str, clients: int, seconds: float, tag: str
) -> Figures:
    async def run() -> tuple[list[float], int]:
        make = grpc_sender(grpc_address) if protocol == "grpc" else rest_sender(url)
        send, client = await make
        try:
            await closed_loop(send, clients, min(3.0, seconds), f"{tag}-warm")
            return await closed_loop(send, clients, seconds, tag)
        finally:
            await client.close()

    before = server_times(url)
    latencies, errors = asyncio.run(run())
    after = server_times(url)
    requests = max(1, after[0] - before[0])
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return Figures(
        protocol,
        clients,
        len(latencies) / seconds,
        1000 * cuts[49],
        1000 * cuts[89],
        1000 * cuts[98],
        errors,
        (after[1] - before[1]) / requests / 1e6,
        (after[2] - before[2]) / requests / 1e6,
    )


def v1_round(url: str, clients: int, seconds: float) -> Figures:
    result = measure_load(url, "/v1/classify", clients, seconds, warmup_s=min(3.0, seconds))
    errors = sum(n for status, n in result.statuses.items() if status != "200")
    return Figures(
        "v1 multipart",
        clients,
        result.ok_rps,
        result.p50_ms,
        float("nan"),
        result.p99_ms,
        errors,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running service (then --grpc too)")
    parser.add_argument("--grpc", help="its gRPC address, host:port")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lite0", action="store_true", help="Lite0 instead of ResNet50")
    args = parser.parse_args()
    grpc_port = free_port()
    env = RESNET50_ENV | {"RESNET_SERVE_GRPC_PORT": str(grpc_port)}
    if args.lite0:
        env |= {
            "RESNET_SERVE_MODEL": "tf_efficientnet_lite0",
            "RESNET_SERVE_WEIGHTS": "lite0-package",
        }
    print(machine_description(), flush=True)
    rows: list[Figures] = []
    with service_at(args.url, env) as (url, _):
        grpc_address = args.grpc or f"127.0.0.1:{grpc_port}"
        for round_number in range(args.rounds):
            for clients in (args.clients, 1):
                rows.append(v1_round(url, clients, args.seconds))
                for protocol in ("grpc", "rest binary"):
                    tag = f"{os.getpid()}-{round_number}-{clients}-{protocol}"
                    rows.append(
                        protocol_round(protocol, url, grpc_address, clients, args.seconds, tag)
                    )
                for row in rows[-3:]:
                    print(json.dumps(row.__dict__), flush=True)
    print(table(rows))


def table(rows: list[Figures]) -> str:
    lines = [
        "| protocol | clients | ok/s (median) | p50 ms | p99 ms | server queue ms | compute ms "
        "| vs /v1 throughput | vs /v1 one-client p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    key = lambda row: (row.protocol, row.clients)  # noqa: E731
    for (protocol, clients), group in itertools.groupby(sorted(rows, key=key), key=key):
        mine = list(group)
        v1 = [row for row in rows if row.protocol == "v1 multipart" and row.clients == clients]
        ratio = statistics.median(m.ok_per_s / v.ok_per_s for m, v in zip(mine, v1, strict=True))
        delta = statistics.median(m.p50_ms - v.p50_ms for m, v in zip(mine, v1, strict=True))
        lines.append(
            f"| {protocol} | {clients} | {statistics.median(r.ok_per_s for r in mine):.1f} "
            f"| {statistics.median(r.p50_ms for r in mine):.1f} "
            f"| {statistics.median(r.p99_ms for r in mine):.1f} "
            f"| {statistics.median(r.queue_ms for r in mine):.1f} "
            f"| {statistics.median(r.compute_ms for r in mine):.1f} "
            f"| {ratio:.2f}x | {delta:+.1f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

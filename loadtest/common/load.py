"""Closed-loop HTTP load: N clients each send one request at a time for a fixed duration.

    python -m loadtest.common.load --url http://127.0.0.1:8000 --concurrency 32 --seconds 60
    python -m loadtest.common.load --concurrency 256 --processes 4 ...   # past ~1,000 rps

Every request carries a unique 500-px JPEG (see loadtest.common.images). Prints throughput of
successful responses, latency percentiles and every status seen. One asyncio process offers
about 1,000 rps at most, so --processes spreads the clients over several load processes that
measure the same wall-clock window; their raw latencies are merged, so the percentiles are
exact. Only loopback URLs.
"""

import argparse
import asyncio
import itertools
import os
import random
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from urllib.parse import urlparse

from loadtest.common.http_client import Connection, multipart_request
from loadtest.common.images import base_jpegs, unique_jpegs

_START_DELAY_S = 2.0  # for load processes to start and make their images before the window


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    ok_rps: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    refused_p99_ms: float = float("nan")  # how fast 429s came back
    refused_max_ms: float = float("nan")


@dataclass
class Samples:
    """What one load process saw inside the window."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    refusals: list[float] = field(default_factory=list)  # seconds, 429s
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Window:
    """Wall-clock times (time.time()) shared by every load process."""

    measure_from: float
    stop_at: float


async def drive(
    url: str,
    path: str,
    clients: int,
    window: Window,
    repeat: bool,
    tag: str,
    back_off: bool = False,
    early_retry_s: float = 0.0,
    files: int = 0,
) -> Samples:
    """Closed-loop load from this process; `repeat` sends one image again and again (cache
    hits), else unique ones (`tag` keeps them unique across processes). With `back_off` a
    client told 429 waits its Retry-After plus up to half of it again (jitter), as a
    well-behaved client does; with `early_retry_s` it comes back that soon whatever
    Retry-After said, as a retry loop that ignores it does. `files`: that many images per
    request in the repeated field `files` (a batch route), else one in `file`."""
    images = itertools.repeat(base_jpegs()[0]) if repeat else unique_jpegs(tag=tag)
    samples = Samples()
    # perf_counter for latencies; the shared window is in wall-clock time.
    offset = time.perf_counter() - time.time()
    measure_from, stop_at = window.measure_from + offset, window.stop_at + offset

    async def client() -> None:
        connection = Connection(url)
        try:
            while (sent := time.perf_counter()) < stop_at:
                if files:
                    batch = [next(images) for _ in range(files)]
                    request = multipart_request(connection.host, path, "files", "x.jpg", batch)
                else:
                    request = multipart_request(
                        connection.host, path, "file", "x.jpg", next(images)
                    )
                retry_after_s = 0.0
                try:
                    reply = await connection.send(request)
                    status = str(reply.status)
                    if reply.status == 429 and back_off:
                        # Retry-After is whole seconds: clients refused together that waited
                        # exactly that long would come back together, a burst that queues
                        # at the door. Well-behaved clients add jitter.
                        retry_after_s = float(reply.headers.get("retry-after", "1"))
                        retry_after_s *= random.uniform(1.0, 1.5)
                    elif reply.status == 429 and early_retry_s:
                        retry_after_s = early_retry_s
                except (OSError, asyncio.IncompleteReadError) as exc:
                    status = type(exc).__name__
                if sent >= measure_from:  # only requests started inside the window count
                    samples.statuses[status] += 1
                    if status == "200":
                        samples.latencies.append(time.perf_counter() - sent)
                    elif status == "429":
                        samples.refusals.append(time.perf_counter() - sent)
                if retry_after_s:
                    await asyncio.sleep(min(retry_after_s, max(0.0, stop_at - time.perf_counter())))
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


def _drive_in_process(
    url: str,
    path: str,
    clients: int,
    window: Window,
    repeat: bool,
    tag: str,
    back_off: bool,
    early_retry_s: float = 0.0,
    files: int = 0,
) -> Samples:
    return asyncio.run(
        drive(url, path, clients, window, repeat, tag, back_off, early_retry_s, files)
    )


def drive_groups(
    url: str, groups: "list[Group]", seconds: float, warmup_s: float
) -> "list[Samples]":
    """Several groups of clients, each in load processes of its own, measured over one
    window: what each group saw."""
    start = time.time() + _START_DELAY_S
    window = Window(start + warmup_s, start + warmup_s + seconds)
    run = f"{os.getpid()}-{time.time_ns()}"
    jobs = [
        (g, i, share)
        for g, group in enumerate(groups)
        for i, share in enumerate(_shares(group.clients, group.processes))
        if share
    ]
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        futures = [
            (
                g,
                pool.submit(
                    _drive_in_process,
                    url,
                    groups[g].path,
                    share,
                    window,
                    False,
                    f"{run}-{g}-{i}",
                    groups[g].back_off,
                    groups[g].early_retry_s,
                    groups[g].files,
                ),
            )
            for g, i, share in jobs
        ]
        seen = [Samples() for _ in groups]
        for g, future in futures:
            part = future.result()
            seen[g].latencies += part.latencies
            seen[g].refusals += part.refusals
            seen[g].statuses += part.statuses
    return seen


@dataclass(frozen=True)
class Group:
    """Clients that behave alike: how many, where they send, what they do with a 429."""

    clients: int
    path: str = "/v1/classify"
    back_off: bool = True
    early_retry_s: float = 0.0
    files: int = 0
    processes: int = 1


def _shares(clients: int, processes: int) -> list[int]:
    return [clients // processes + (i < clients % processes) for i in range(processes)]


def measure_load(
    url: str,
    path: str,
    concurrency: int,
    seconds: float,
    warmup_s: float,
    *,
    repeat: bool = False,
    processes: int = 1,
    back_off: bool = False,
) -> LoadResult:
    """`concurrency` clients over `processes` load processes (1: this process); with
    `back_off`, clients wait out a 429's Retry-After."""
    start = time.time() + (_START_DELAY_S if processes > 1 else 0)
    window = Window(start + warmup_s, start + warmup_s + seconds)
    # Every call its own images: a second call in one run (another step, the idle phase after
    # the loaded one) must not resend the first's bytes, which the cache would answer.
    run = f"{os.getpid()}-{time.time_ns()}"
    if processes == 1:
        parts = [_drive_in_process(url, path, concurrency, window, repeat, run, back_off)]
    else:
        shares = _shares(concurrency, processes)
        # spawn: a fresh interpreter, whatever the caller's threads or event loop
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(_drive_in_process, url, path, n, window, repeat, f"{run}-{i}", back_off)
                for i, n in enumerate(shares)
                if n
            ]
            parts = [future.result() for future in futures]
    latencies = [latency for part in parts for latency in part.latencies]
    statuses: Counter[str] = sum((part.statuses for part in parts), Counter())
    ok = len(latencies)
    quantiles = percentiles(latencies)
    refusals = [refusal for part in parts for refusal in part.refusals]
    return LoadResult(
        concurrency,
        ok / seconds,
        1000 * quantiles[49],
        1000 * quantiles[98],
        dict(statuses),
        refused_p99_ms=1000 * percentiles(refusals)[98],
        refused_max_ms=1000 * max(refusals, default=float("nan")),
    )


def percentiles(seconds: list[float]) -> list[float]:
    return statistics.quantiles(seconds, n=100) if len(seconds) > 1 else [float("nan")] * 99


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
    parser.add_argument("--processes", type=int, default=1, help="load processes")
    args = parser.parse_args()
    host = urlparse(args.url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        parser.error("load is only sent to loopback addresses")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    print("| clients | ok rps | p50 ms | p99 ms | statuses |\n|---|---|---|---|---|")
    for concurrency in args.concurrency:
        result = measure_load(
            args.url,
            args.path,
            concurrency,
            args.seconds,
            args.warmup,
            repeat=args.repeat,
            processes=args.processes,
        )
        print(
            f"| {concurrency} | {result.ok_rps:.2f} | {result.p50_ms:.1f} | "
            f"{result.p99_ms:.1f} | {result.statuses} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

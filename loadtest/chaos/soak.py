"""Soak: a long mixed load, sampling the service's memory, open files and threads.

    python -m loadtest.chaos.soak --minutes 30
    python -m loadtest.chaos.soak --minutes 30 --workers 2 --weights random --model resnet50...

Starts a redis-server and the service (Lite0 weights unless told otherwise, result cache in
Redis so the process's own memory has no cache to fill) and runs --clients closed-loop
clients: classify unique JPEGs (6), classify repeated ones (3), search (2), item PUTs over a
fixed set of 200 ids (1), so the index does not grow. Every 10 s it samples RSS, open file
descriptors and threads over the service's process tree. After the warm-up (the first
--warmup-minutes), none may grow more than 5% by the end (the mean of the last three samples
against the first after warm-up). Prints a sample a minute and the verdict; exit status 1 if
it grew or any request got a 5xx.
"""

import argparse
import asyncio
import itertools
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import psutil

from loadtest.common.images import base_jpegs, unique_jpegs
from loadtest.common.processes import LITE0_ENV, free_port, start_redis, start_service, stop

GROWTH_LIMIT = 0.05
SAMPLE_EVERY_S = 10.0
MIX = {"classify_unique": 6, "classify_repeated": 3, "search": 2, "put_item": 1}


@dataclass(frozen=True)
class Sample:
    at_s: float
    rss_mb: float
    open_files: int
    threads: int


def sample_tree(pid: int, at_s: float) -> Sample:
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    return Sample(
        at_s,
        sum(p.memory_info().rss for p in processes) / 1e6,
        sum(p.num_fds() for p in processes),
        sum(p.num_threads() for p in processes),
    )


async def mixed_load(url: str, clients: int, stop_at: float, statuses: Counter[str]) -> None:
    unique = unique_jpegs(tag=f"soak-{os.getpid()}")
    repeated = itertools.cycle(base_jpegs())
    actions, weights = zip(*MIX.items(), strict=True)

    async def client(number: int) -> None:
        rng = random.Random(number)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while time.monotonic() < stop_at:
                action = rng.choices(actions, weights)[0]
                files = {
                    "file": ("x.jpg", next(repeated if action != "classify_unique" else unique))
                }
                try:
                    if action == "search":
                        response = await http.post("/v1/search", files=files)
                    elif action == "put_item":
                        item = f"soak/{rng.randrange(200)}"
                        response = await http.put(f"/v1/items/{item}", files=files)
                    else:
                        response = await http.post("/v1/classify", files=files)
                    statuses[f"{action} {response.status_code}"] += 1
                    if response.status_code == 429:
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                except httpx.HTTPError as exc:
                    statuses[f"{action} {type(exc).__name__}"] += 1

    await asyncio.gather(*(client(number) for number in range(clients)))


async def soak(
    pid: int, url: str, minutes: float, clients: int
) -> tuple[list[Sample], Counter[str]]:
    started = time.monotonic()
    stop_at = started + 60 * minutes
    statuses: Counter[str] = Counter()
    load = asyncio.create_task(mixed_load(url, clients, stop_at, statuses))
    samples = []
    while time.monotonic() < stop_at:
        sample = sample_tree(pid, time.monotonic() - started)
        samples.append(sample)
        if len(samples) % 6 == 1:
            done = sum(statuses.values())
            print(
                f"{sample.at_s / 60:5.1f} min: RSS {sample.rss_mb:7.1f} MB, "
                f"{sample.open_files} open files, {sample.threads} threads, {done} requests",
                flush=True,
            )
        await asyncio.sleep(SAMPLE_EVERY_S)
    await load
    return samples, statuses


def growth(samples: list[Sample], warmup_s: float, value: str) -> tuple[float, float, float]:
    """Baseline after warm-up, the end (mean of the last three samples) and the growth."""
    after = [s for s in samples if s.at_s >= warmup_s]
    baseline = float(getattr(after[0], value))
    end = statistics.fmean(float(getattr(s, value)) for s in after[-3:])
    return baseline, end, end / baseline - 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="RESNET_SERVE_WORKERS")
    parser.add_argument("--model", help="RESNET_SERVE_MODEL (unset: Lite0 with real weights)")
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS (with --model)")
    args = parser.parse_args()
    redis_port, port = free_port(), free_port()
    redis = start_redis(redis_port)
    env = (
        os.environ
        | LITE0_ENV
        | {
            "RESNET_SERVE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "RESNET_SERVE_WORKERS": str(args.workers),
            "RESNET_SERVE_UI": "false",
            "RESNET_SERVE_DATA_DIR": tempfile.mkdtemp(prefix="resnet-serve-soak-"),
        }
    )
    if args.model:
        env |= {"RESNET_SERVE_MODEL": args.model, "RESNET_SERVE_WEIGHTS": args.weights or ""}
    try:
        service = start_service(env, port)
        try:
            url = f"http://127.0.0.1:{port}"
            samples, statuses = asyncio.run(soak(service.pid, url, args.minutes, args.clients))
        finally:
            stop(service)
    finally:
        stop(redis)
    print(f"requests: {dict(sorted(statuses.items()))}")
    failed = sum(n for key, n in statuses.items() if not key.endswith(("200", "201", "429")))
    verdicts = []
    for value, unit in (("rss_mb", "MB"), ("open_files", ""), ("threads", "")):
        baseline, end, grew = growth(samples, 60 * args.warmup_minutes, value)
        ok = grew < GROWTH_LIMIT
        verdicts.append(ok)
        print(
            f"{'PASS' if ok else 'FAIL'} {value}: {baseline:.1f}{unit} after warm-up, "
            f"{end:.1f}{unit} at the end: {grew:+.1%} (limit +{GROWTH_LIMIT:.0%})"
        )
    print(f"{'PASS' if not failed else 'FAIL'} requests that failed (5xx or no answer): {failed}")
    raise SystemExit(0 if all(verdicts) and not failed else 1)


if __name__ == "__main__":
    main()

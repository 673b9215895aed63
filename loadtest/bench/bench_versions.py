"""Model versions under load: re-embedding while serving, a switch, a rollback.

    python -m loadtest.bench.bench_versions --items 10000      # the issue's figures
    python -m loadtest.bench.bench_versions --items 1000 --seconds 10

One service (WORKERS=1, EfficientNet-Lite0 with its offline weights unless RESNET_SERVE_*
says otherwise) on a free loopback port:
1. `--items` items are stored (unique 500-px JPEGs, 8 writers);
2. the model's raw throughput: 32 clients classifying unique images;
3. live p99 with `--clients` classify clients, before any new version;
4. a version `v2` (random weights) is added and re-embeds every item while the same clients
   run: its progress and estimate are printed as they go, then the re-embedding rate as a
   fraction of the raw throughput and the live p99 meanwhile;
5. a switch under load: 32 clients, classify and search mixed, `v2` made live halfway: failed
   requests, p99 before and in the second around the switch;
6. a rollback: how long `activate default` takes to answer, and the next request's version.
"""

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass

import httpx

from loadtest.common.images import unique_jpegs
from loadtest.common.processes import LITE0_ENV, service_at


@dataclass
class Sample:
    started: float  # time.monotonic()
    seconds: float
    status: int
    version: str


async def drive(url: str, clients: int, stop: asyncio.Event, paths: list[str]) -> list[Sample]:
    """Closed-loop clients sending unique images to `paths` in turn until `stop`."""
    samples: list[Sample] = []
    images = unique_jpegs(tag=f"versions-{time.time_ns()}")

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            n = number
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                try:
                    answer = await http.post(
                        paths[n % len(paths)], files={"file": ("x.jpg", next(images))}
                    )
                    status, version = answer.status_code, answer.headers.get("x-model-version", "")
                except httpx.HTTPError:
                    status, version = 0, ""
                samples.append(Sample(started, time.monotonic() - started, status, version))

    await asyncio.gather(*(client(n) for n in range(clients)))
    return samples


def p99_ms(samples: list[Sample]) -> float:
    ok = [s.seconds for s in samples if s.status == 200]
    return 1000 * statistics.quantiles(ok, n=100)[98] if len(ok) > 1 else float("nan")


async def timed(url: str, clients: int, seconds: float, paths: list[str]) -> list[Sample]:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await drive(url, clients, stop, paths)


async def fill(url: str, items: int) -> None:
    images = unique_jpegs(tag=f"items-{time.time_ns()}")
    numbers = iter(range(items))

    async def writer() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for n in numbers:
                answer = await http.put(f"/v1/items/i{n}", files={"file": ("x.jpg", next(images))})
                answer.raise_for_status()

    await asyncio.gather(*(writer() for _ in range(8)))


async def scenario(url: str, args: argparse.Namespace) -> None:
    started = time.monotonic()
    await fill(url, args.items)
    print(f"stored {args.items} items in {time.monotonic() - started:.0f} s", flush=True)
    raw = await timed(url, 32, args.seconds, ["/v1/classify"])
    raw_rate = sum(s.status == 200 for s in raw) / args.seconds
    print(f"raw throughput (32 clients): {raw_rate:.1f} images/s", flush=True)
    before = await timed(url, args.clients, args.seconds, ["/v1/classify"])
    print(f"live p99 with {args.clients} clients, before: {p99_ms(before):.0f} ms", flush=True)

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        (await http.post("/v1/models", json={"name": "v2", "weights": "random"})).raise_for_status()
        stop = asyncio.Event()
        load = asyncio.create_task(drive(url, args.clients, stop, ["/v1/classify"]))
        embedding_started = time.monotonic()
        while True:
            v2 = next(
                v for v in (await http.get("/v1/models")).json()["versions"] if v["name"] == "v2"
            )
            print(
                f"  {time.monotonic() - embedding_started:6.0f} s  {v2['state']:12}  "
                f"{v2['progress']}",
                flush=True,
            )
            if v2["state"] in ("ready", "failed"):
                break
            await asyncio.sleep(args.seconds / 2)
        stop.set()
        during = await load
        took = time.monotonic() - embedding_started
        rate = args.items / took
        print(
            f"re-embedded {args.items} items in {took:.0f} s: {rate:.1f} items/s, "
            f"{rate / raw_rate:.2f} of the raw throughput; live p99 meanwhile "
            f"{p99_ms(during):.0f} ms (requests: {len(during)}, "
            f"failed: {sum(s.status != 200 for s in during)})",
            flush=True,
        )

        stop = asyncio.Event()
        mixed = asyncio.create_task(drive(url, 32, stop, ["/v1/classify", "/v1/search"]))
        await asyncio.sleep(args.seconds)
        switch_at = time.monotonic()
        (await http.post("/v1/models/v2/activate")).raise_for_status()
        await asyncio.sleep(args.seconds)
        stop.set()
        samples = await mixed
        before_switch = [s for s in samples if s.started < switch_at - 1]
        around = [s for s in samples if abs(s.started - switch_at) <= 0.5]
        failed = sum(s.status != 200 for s in samples)
        print(
            f"switch under load (32 clients, classify + search): {len(samples)} requests, "
            f"{failed} failed; p99 before {p99_ms(before_switch):.0f} ms, in the second "
            f"around the switch {p99_ms(around):.0f} ms",
            flush=True,
        )

        started = time.monotonic()
        (await http.post("/v1/models/default/activate")).raise_for_status()
        answer = await http.post(
            "/v1/classify", files={"file": ("x.jpg", next(unique_jpegs(tag="rb")))}
        )
        print(
            f"rollback: answered in {1000 * (time.monotonic() - started):.0f} ms, the next "
            f"request served by {answer.headers.get('x-model-version')}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8, help="live clients while re-embedding")
    parser.add_argument("--seconds", type=float, default=20.0, help="each measured phase")
    args = parser.parse_args()
    env = LITE0_ENV | {"RESNET_SERVE_WORKERS": "1", "RESNET_SERVE_UI": "false"}
    env |= {k: v for k, v in os.environ.items() if k.startswith("RESNET_SERVE_")}
    with service_at(None, env) as (url, _):
        asyncio.run(scenario(url, args))


if __name__ == "__main__":
    main()

"""Oversize bodies against a single-image route, with real clients beside them.

    python -m loadtest.chaos.oversize_bodies --senders 64 --body-mb 600 --clients 8
    python -m loadtest.chaos.oversize_bodies --url http://127.0.0.1:8000 ...

Starts the service (Lite0 weights, torch fp32, one process) unless --url is given, then at
once: --senders connections POST a --body-mb body to /v1/classify, half as JSON and half as
multipart, each round once with Content-Length declared and once chunked (1 MiB chunks,
streamed as fast as the socket takes them); and --clients closed-loop clients classify real
unique JPEGs for the whole time. Reports, per round: how soon each oversize body was
refused (max and p50), how many bytes a chunked sender got through before its refusal, the
growth of the service's resident memory (its whole process tree) over the round, and the
real clients' p50/p99 and statuses. Exit status 1 if an oversize body got anything but 413
or 429, took over 1 s to refuse (declared), memory grew by 256 MB or more, or a real client
got anything but 200.
"""

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from typing import Any

import httpx
import psutil

from loadtest.common.images import unique_jpegs
from loadtest.common.processes import LITE0_ENV, service_at

CHUNK = b"A" * (1 << 20)
GROWTH_LIMIT_BYTES = 256 << 20
REFUSAL_LIMIT_S = 1.0


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


async def oversize(
    host: str, port: int, body_bytes: int, form: str, chunked: bool
) -> tuple[str, float, int]:
    """(status line, seconds to the refusal, bytes sent before it)."""
    reader, writer = await asyncio.open_connection(host, port)
    if form == "json":
        content_type, opening = "application/json", b'{"image": "'
    else:
        content_type = "multipart/form-data; boundary=b"
        opening = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}"
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{length}\r\n\r\n"
    )
    started = time.monotonic()
    writer.write(head.encode())
    answer = asyncio.ensure_future(reader.readline())
    sent = 0
    pieces = [opening] + [CHUNK] * (body_bytes // len(CHUNK))
    for piece in pieces:
        if answer.done():
            break
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        try:
            await writer.drain()
        except ConnectionError:
            break
        sent += len(piece)
        # drain() returns without yielding while the server reads as fast as this writes:
        # yield once, so an answer that has arrived is seen before the next piece goes out.
        await asyncio.sleep(0)
    try:
        status = (await asyncio.wait_for(answer, 60)).decode().strip()
    except (TimeoutError, ConnectionError) as exc:
        status = f"no answer ({type(exc).__name__})"
    seconds = time.monotonic() - started
    writer.close()
    return status, seconds, sent


async def real_clients(
    url: str, clients: int, stop: asyncio.Event
) -> tuple[Counter[str], list[float]]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    images = unique_jpegs(tag="oversize")

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not stop.is_set():
                started = time.monotonic()
                files = {"file": ("x.jpg", next(images), "image/jpeg")}
                response = await http.post("/v1/classify", files=files)
                latencies.append(time.monotonic() - started)
                statuses[str(response.status_code)] += 1
                if response.status_code != 200:  # what refused it (an overload's 429?)
                    statuses[f"{response.status_code} {response.text[:80]}"] += 0

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses, latencies


async def round_of(
    url: str, pid: int | None, args: argparse.Namespace, chunked: bool
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    before = tree_rss(pid) if pid else 0
    peak = before
    stop = asyncio.Event()
    served = asyncio.ensure_future(real_clients(url, args.clients, stop))
    await asyncio.sleep(1)  # the real clients are under way
    senders = asyncio.gather(
        *(
            oversize(host, int(port), args.body_mb << 20, "json" if i % 2 else "multipart", chunked)
            for i in range(args.senders)
        )
    )
    while not senders.done():
        if pid:
            peak = max(peak, tree_rss(pid))
        await asyncio.sleep(0.05)
    refused = senders.result()
    stop.set()
    statuses, latencies = await served
    ordered = sorted(latencies)
    return {
        "mode": "chunked" if chunked else "declared",
        "oversize_statuses": dict(
            Counter(
                status.split(" ", 2)[1] if status.startswith("HTTP") else status
                for status, _, _ in refused
            )
        ),
        "refused_in_s_p50": round(statistics.median(s for _, s, _ in refused), 3),
        "refused_in_s_max": round(max(s for _, s, _ in refused), 3),
        "sent_before_refusal_mb_max": round(max(sent for _, _, sent in refused) / 2**20, 1),
        "rss_growth_mb": round((peak - before) / 2**20, 1) if pid else None,
        "real_client_statuses": dict(statuses),
        "real_client_p50_s": round(ordered[len(ordered) // 2], 3) if ordered else None,
        "real_client_p99_s": round(ordered[int(0.99 * (len(ordered) - 1))], 3) if ordered else None,
    }


def failures(result: dict[str, Any]) -> list[str]:
    problems = []
    # 413 past the route's limit, or 429 earlier (too many large JSON bodies at once)
    if set(result["oversize_statuses"]) - {"413", "429"}:
        problems.append(f"oversize bodies got {result['oversize_statuses']}")
    if result["mode"] == "declared" and result["refused_in_s_max"] > REFUSAL_LIMIT_S:
        problems.append(f"a declared body took {result['refused_in_s_max']} s to refuse")
    growth = result["rss_growth_mb"]
    if growth is not None and growth * 2**20 >= GROWTH_LIMIT_BYTES:
        problems.append(f"memory grew by {growth} MB")
    if set(result["real_client_statuses"]) - {"200"}:
        problems.append(f"real clients got {result['real_client_statuses']}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running service (memory is not measured then)")
    parser.add_argument("--senders", type=int, default=64)
    parser.add_argument("--body-mb", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    env = LITE0_ENV | {"RESNET_SERVE_UI": "false"}
    problems: list[str] = []
    with service_at(args.url, env) as (url, pid):
        for chunked in (False, True):
            result = asyncio.run(round_of(url, pid, args, chunked))
            print(json.dumps(result), flush=True)
            problems += failures(result)
    print("ok" if not problems else "FAILED: " + "; ".join(problems))
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()

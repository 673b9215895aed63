"""Decoder fuzzing through the HTTP API: mutated real images of every format users send.

    python -m loadtest.chaos.fuzz_images --cases 10000                # starts a service (Lite0)
    python -m loadtest.chaos.fuzz_images --url http://127.0.0.1:8000 --cases 10000

Seeds are the shipped photos encoded as baseline and progressive JPEG, PNG, WebP, GIF, BMP and
TIFF; each case applies seeded mutations (bit flips, truncation, spliced headers, huge
declared sizes, inserted and repeated bytes) and goes to classify, embed or an item PUT. The
service must answer every case with 200 or a 4xx within a few seconds, keep its memory
bounded, and still classify a good photo afterwards. The report counts statuses, error codes
and mutations; the exit status is 1 when any of that failed.
"""

import argparse
import asyncio
import contextlib
import io
import random
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import psutil
from PIL import Image

from loadtest.common.images import base_jpegs
from loadtest.common.processes import LITE0_ENV, service_at

FORMATS: dict[str, dict[str, object]] = {
    "jpeg": {"format": "JPEG", "quality": 85},
    "progressive-jpeg": {"format": "JPEG", "quality": 85, "progressive": True},
    "png": {"format": "PNG"},
    "webp": {"format": "WEBP", "quality": 80},
    "gif": {"format": "GIF"},
    "bmp": {"format": "BMP"},
    "tiff": {"format": "TIFF"},
}
SLOW_S = 5.0  # "no request over a few seconds"
RSS_GROWTH_LIMIT = 1.5  # the service's memory after the run, against after the warm-up cases


def seed_images(long_side: int = 96) -> dict[str, bytes]:
    """One small real photo in each format (small: a fuzz case should cost the decoder, not
    the model)."""
    photo = Image.open(io.BytesIO(base_jpegs(long_side)[0])).convert("RGB")
    seeds = {}
    for name, options in FORMATS.items():
        buffer = io.BytesIO()
        photo.save(buffer, **options)  # type: ignore[arg-type]
        seeds[name] = buffer.getvalue()
    return seeds


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        position = rng.randrange(len(mutated))
        mutated[position] ^= 1 << rng.randrange(8)
    return bytes(mutated)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))] if len(data) > 1 else data


def splice(data: bytes, rng: random.Random, seeds: dict[str, bytes]) -> bytes:
    """One format's header on another's body."""
    other = seeds[rng.choice(sorted(seeds))]
    cut = rng.randrange(min(len(data), 200) + 1)
    return data[:cut] + other[rng.randrange(len(other)) :]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data))
    junk = rng.choice([b"\x00", b"\xff", b"\xff\xd8", b"\xff\xd9"]) * rng.randint(1, 4096)
    return data[:position] + junk + data[position:]


def repeat_chunk(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    chunk = data[start : start + rng.randint(1, 512)]
    return data[:start] + chunk * rng.randint(2, 200) + data[start:]


def huge_size(data: bytes, rng: random.Random) -> bytes:
    """Declared width and height far beyond the pixel limit, headers otherwise valid."""
    width, height = rng.choice([(65_535, 65_535), (100_000, 100_000), (1, 2**31 - 1)])
    width16, height16 = min(width, 65_535), min(height, 65_535)  # for 16-bit size fields
    mutated = bytearray(data)
    if data.startswith(b"\x89PNG"):
        mutated[16:24] = struct.pack(">II", width, height)
        mutated[29:33] = struct.pack(">I", zlib.crc32(bytes(mutated[12:29])))  # a valid CRC
    elif data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):  # baseline or progressive frame header
            at = data.find(marker)
            if at >= 0:
                mutated[at + 5 : at + 9] = struct.pack(
                    ">HH", min(height, 65_535), min(width, 65_535)
                )
    elif data.startswith(b"GIF"):
        mutated[6:10] = struct.pack("<HH", width16, height16)
    elif data.startswith(b"BM"):
        mutated[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    elif data.startswith(b"RIFF"):  # WebP: the VP8 frame's 14-bit sizes
        at = data.find(b"\x9d\x01\x2a")
        if at >= 0:
            mutated[at + 3 : at + 7] = struct.pack("<HH", 16_383, 16_383)
    elif data[:2] in (b"II", b"MM"):
        with contextlib.suppress(struct.error):  # no directory left to patch: as it is
            mutated = bytearray(_tiff_with_size(data, width, height))
    return bytes(mutated)


def _tiff_with_size(data: bytes, width: int, height: int) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    mutated = bytearray(data)
    for entry in range(count):
        at = ifd + 2 + 12 * entry
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            if kind == 3:  # SHORT
                mutated[at + 8 : at + 10] = struct.pack(order + "H", min(value, 65_535))
            else:
                mutated[at + 8 : at + 12] = struct.pack(order + "I", value)
    return bytes(mutated)


Mutation = Callable[[bytes, random.Random], bytes]


def mutations(seeds: dict[str, bytes]) -> dict[str, Mutation]:
    return {
        "bit-flips": flip_bits,
        "truncation": truncate,
        "splice": lambda data, rng: splice(data, rng, seeds),
        "inserted-bytes": insert_bytes,
        "repeated-chunk": repeat_chunk,
        "huge-size": huge_size,
    }


@dataclass(frozen=True)
class Case:
    number: int
    seed_format: str
    mutation: str
    data: bytes
    endpoint: str


def fuzz_cases(count: int, seed: int = 0) -> Iterator[Case]:
    """`count` mutated images, the same ones for the same seed; one in ten unmutated.
    Mutations stack: each takes whatever bytes the one before left."""
    rng = random.Random(seed)
    seeds = seed_images()
    mutators = mutations(seeds)
    for number in range(count):
        seed_format = rng.choice(sorted(seeds))
        data = seeds[seed_format]
        applied = []
        if rng.random() >= 0.1:
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                name = rng.choice(sorted(mutators))
                data = mutators[name](data, rng) or b"\x00"
                applied.append(name)
        endpoint = rng.choices(["classify", "embed", "item"], weights=[6, 3, 1])[0]
        yield Case(number, seed_format, "+".join(applied) or "none", data, endpoint)


@dataclass
class FuzzReport:
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    mutations: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    rss_mb: tuple[float, float] = (0.0, 0.0)  # after warm-up, after the run
    still_serving: bool = False

    @property
    def passed(self) -> bool:
        growth_ok = self.rss_mb[1] <= RSS_GROWTH_LIMIT * self.rss_mb[0] or not self.rss_mb[0]
        return not self.server_errors and not self.slow and growth_ok and self.still_serving

    def lines(self) -> list[str]:
        before, after = self.rss_mb
        return [
            f"cases: {self.statuses.total()}; statuses: {dict(sorted(self.statuses.items()))}",
            f"error codes: {dict(self.codes.most_common())}",
            f"cases with each mutation: {dict(self.mutations.most_common())}",
            f"slowest answer: {self.slowest_s * 1000:.0f} ms (limit {SLOW_S:.0f} s); "
            f"over the limit: {len(self.slow)}",
            f"server RSS: {before:.0f} MB after warm-up, {after:.0f} MB after the run "
            f"(limit x{RSS_GROWTH_LIMIT})",
            f"5xx or no answer: {len(self.server_errors)} {self.server_errors[:5]}",
            f"a good photo still classifies afterwards: {self.still_serving}",
            "PASSED" if self.passed else "FAILED",
        ]


async def _send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    files = {"file": (f"case-{case.number}", case.data, "application/octet-stream")}
    if case.endpoint == "item":
        return await client.put(f"/v1/items/fuzz/{case.number}", files=files)
    return await client.post(f"/v1/{case.endpoint}", files=files)


def _tree_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    return sum(process.memory_info().rss for process in processes) / 1e6


async def run_fuzz(
    url: str,
    cases: int,
    *,
    seed: int = 0,
    concurrency: int = 4,
    server_pid: int | None = None,
    headers: dict[str, str] | None = None,
) -> FuzzReport:
    """Send the cases and judge the answers; `server_pid` (with its children) for memory."""
    report = FuzzReport()
    pending = fuzz_cases(cases, seed)
    warm_up = max(1, min(100, cases // 10))
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as client:

        async def worker() -> None:
            for case in pending:  # one shared iterator: each case goes out once
                started = time.perf_counter()
                label = f"#{case.number} {case.seed_format} {case.mutation} -> {case.endpoint}"
                try:
                    response = await _send(client, case)
                except httpx.HTTPError as exc:
                    report.server_errors.append(f"{label}: {exc!r}")
                    continue
                elapsed = time.perf_counter() - started
                report.slowest_s = max(report.slowest_s, elapsed)
                if elapsed > SLOW_S:
                    report.slow.append(f"{label}: {elapsed:.1f} s")
                report.statuses[response.status_code] += 1
                report.mutations.update(case.mutation.split("+"))  # each mutation applied
                if response.status_code >= 500:
                    report.server_errors.append(f"{label}: {response.status_code}")
                elif response.status_code >= 400:
                    report.codes[response.json()["error"]["code"]] += 1
                if case.number == warm_up:
                    report.rss_mb = (_tree_rss_mb(server_pid), 0.0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.rss_mb = (report.rss_mb[0], _tree_rss_mb(server_pid))
        good = await client.post(
            "/v1/classify", files={"file": ("good.jpg", base_jpegs()[0], "image/jpeg")}
        )
        report.still_serving = good.status_code == 200
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--url", help="a running service; unset: start one (Lite0 weights)")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with service_at(args.url, LITE0_ENV) as (url, pid):
        started = time.perf_counter()
        report = asyncio.run(
            run_fuzz(url, args.cases, seed=args.seed, concurrency=args.concurrency, server_pid=pid)
        )
        seconds = time.perf_counter() - started
    print(f"fuzz of {url}, seed {args.seed}, {args.cases} cases in {seconds:.0f} s")
    print("\n".join(report.lines()))
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()

"""Mutated images of every format through a real server: 200 or 4xx, quickly, memory bounded."""

import asyncio
import io
import random
import signal
from pathlib import Path

import pytest
from PIL import Image

from loadtest.chaos.fuzz_images import FORMATS, fuzz_cases, huge_size, run_fuzz, seed_images
from tests.e2e.server import start_server

CI_CASES = 400  # the loadtest script runs 10,000


def test_seeds_cover_every_format_and_decode() -> None:
    seeds = seed_images()
    assert set(seeds) == set(FORMATS)
    for data in seeds.values():
        Image.open(io.BytesIO(data)).load()


def test_cases_are_reproducible_and_mutated() -> None:
    first = [case.data for case in fuzz_cases(50, seed=3)]
    assert first == [case.data for case in fuzz_cases(50, seed=3)]
    mutated = [case for case in fuzz_cases(200, seed=3) if case.mutation != "none"]
    assert len(mutated) > 150
    assert {case.endpoint for case in mutated} == {"classify", "embed", "item"}


def test_huge_declared_sizes_reach_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # read the header, whatever it says
    for name in ("png", "gif", "bmp", "tiff", "jpeg"):
        declared = Image.open(io.BytesIO(huge_size(seed_images()[name], random.Random(1))))
        assert declared.width * declared.height > 50_000_000, name


def test_fuzzed_uploads_get_200_or_4xx_and_the_server_keeps_serving(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"RESNET_SERVE_MAX_IMAGE_PIXELS": "4000000"})
    try:
        report = asyncio.run(run_fuzz(server.url, CI_CASES, seed=11, server_pid=server.process.pid))
        assert report.passed, "\n".join(report.lines())
        assert report.statuses[200] > 0 and sum(report.statuses.values()) == CI_CASES
        assert report.codes["invalid_input"] > 0 and report.codes["payload_too_large"] > 0
    finally:
        server.stop(signal.SIGKILL)


def test_every_mutation_takes_any_bytes() -> None:
    from loadtest.chaos.fuzz_images import mutations

    rng = random.Random(5)
    seeds = seed_images()
    for mutate in mutations(seeds).values():
        for data in (b"\x00", b"II*\x00", b"\x89PNG", seeds["tiff"][:40], seeds["jpeg"]):
            assert mutate(data, rng) is not None  # whatever the earlier mutations left
    assert sum(1 for _ in fuzz_cases(3000, seed=7)) == 3000

"""End to end: acknowledged index writes survive kill -9; concurrent use stays correct."""

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import start_server
from tests.photos import PHOTO_NAMES, jpeg, resized_jpeg

pytestmark = pytest.mark.e2e


def variant(i: int) -> bytes:
    """Distinct images: the six photos at a few scales."""
    return resized_jpeg(PHOTO_NAMES[i % 6], 0.5 + 0.05 * (i // 6))


async def put(http: httpx.AsyncClient, item_id: str, data: bytes) -> int:
    files = {"file": ("x.jpg", data, "image/jpeg")}
    response = await http.put(f"/v1/items/{item_id}", files=files, data={"metadata": '{"k": 1}'})
    return response.status_code


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"RESNET_SERVE_INDEX_SNAPSHOT_EVERY": "15"})

    async def write() -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            added = await asyncio.gather(*(put(http, f"kill/{i}", variant(i)) for i in range(40)))
            added.append(await put(http, "kill/coffee", jpeg("coffee")))
            deleted = [
                (await http.delete(f"/v1/items/kill/{i}")).status_code for i in range(0, 40, 8)
            ]
            return added, deleted

    added, deleted = asyncio.run(write())
    assert added == [201] * 41 and deleted == [204] * 5
    server.stop(signal.SIGKILL)  # no shutdown hook runs: only what was made durable remains

    restarted = start_server(tmp_path, {"RESNET_SERVE_INDEX_SNAPSHOT_EVERY": "15"})
    try:
        with httpx.Client(base_url=restarted.url, timeout=60) as http:
            assert http.get("/v1/index").json()["count"] == 36
            for i in range(40):
                expected = 404 if i % 8 == 0 else 200
                assert http.get(f"/v1/items/kill/{i}").status_code == expected, i
            assert http.get("/v1/items/kill/7").json()["metadata"] == {"k": 1}
            files = {"file": ("q.jpg", jpeg("coffee"), "image/jpeg")}
            best = http.post("/v1/search", files=files, params={"k": 1}).json()["results"][0]
            assert best["id"] == "kill/coffee" and best["score"] >= 0.99
    finally:
        restarted.stop(signal.SIGKILL)


def test_concurrent_adds_deletes_and_searches(tmp_path: Path) -> None:
    server = start_server(tmp_path, {"RESNET_SERVE_INDEX_FACTORY": "HNSW32"})

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            assert await put(http, "anchor/coffee", jpeg("coffee")) == 201

            async def searcher() -> None:
                for _ in range(10):
                    files = {"file": ("q.jpg", jpeg("coffee"), "image/jpeg")}
                    response = await http.post("/v1/search", files=files, params={"k": 3})
                    assert response.status_code == 200, response.text
                    assert response.json()["results"][0]["id"] == "anchor/coffee"

            async def writer(worker: int) -> None:
                for i in range(12):
                    assert await put(http, f"churn/{worker}/{i % 4}", variant(worker + i)) in (
                        200,
                        201,
                    )
                    if i % 3 == 2:
                        status = (
                            await http.delete(f"/v1/items/churn/{worker}/{i % 4}")
                        ).status_code
                        assert status in (204, 404)

            await asyncio.gather(*(searcher() for _ in range(4)), *(writer(w) for w in range(3)))
            info = (await http.get("/v1/index")).json()
            assert 1 <= info["count"] <= 13
            assert (await http.get("/readyz")).status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        server.stop(signal.SIGKILL)

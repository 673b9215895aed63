"""Crash cycles: concurrent item writes and deletes, kill -9 at a random moment, restart, check.

    python -m loadtest.chaos.crash_cycles --cycles 100
    python -m loadtest.chaos.crash_cycles --cycles 100 --workers 2     # the process split

Each cycle starts the service on one data directory (Lite0 weights), runs --clients writers
that PUT new items and DELETE items whose PUT was acknowledged, kills the whole service with
SIGKILL after a random 0.5 to 4 s, starts it again and checks, over every cycle so far, that
every acknowledged write is there and every acknowledged delete is gone: in the store
(GET /v1/items/{id}) and in the search index (a search filtered to the item's own metadata
finds it, or no longer does). A request the kill cut off is unknown either way and is not
checked. Prints the counts; exit status 1 on any loss.

By default the index is kept busy: it goes approximate at 200 items and merges every 50
additions (at least), and after its random delay a cycle waits up to 5 s for a background
build or snapshot to be running before it kills, so most kills land in one (the count is
printed); --quiet-index leaves the index settings alone and kills at the random moment.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest.common.images import base_jpegs
from loadtest.common.processes import LITE0_ENV, free_port, start_service

ANCHOR = "anchor"
BUILD_WAIT_S = 5.0
# Builds all the time: approximate from 200 items, a merge (and a snapshot) every 50 adds.
BUSY_INDEX = {"RESNET_SERVE_INDEX_EXACT_UP_TO": "200", "RESNET_SERVE_INDEX_SNAPSHOT_EVERY": "50"}


@dataclass
class Ledger:
    """What the service acknowledged, across cycles."""

    present: set[str] = field(default_factory=set)  # PUT acknowledged, no DELETE acknowledged
    deleted: set[str] = field(default_factory=set)  # DELETE acknowledged
    cut_off: set[str] = field(default_factory=set)  # sent, no answer: either outcome is right
    touched: set[str] = field(default_factory=set)  # since the last check
    writes: int = 0
    deletes: int = 0
    lost_writes: list[str] = field(default_factory=list)
    revived_deletes: list[str] = field(default_factory=list)
    kills_during_builds: int = 0

    def record_put(self, item_id: str, answered: bool) -> None:
        self.touched.add(item_id)
        if answered:
            self.present.add(item_id)
            self.writes += 1
        else:
            self.cut_off.add(item_id)

    def record_delete(self, item_id: str, answered: bool) -> None:
        self.touched.add(item_id)
        self.present.discard(item_id)
        if answered:
            self.deleted.add(item_id)
            self.deletes += 1
        else:
            self.cut_off.add(item_id)


async def churn(url: str, ledger: Ledger, clients: int, cycle: int, rng: random.Random) -> None:
    """Writers until the service dies under them."""
    image = base_jpegs(160)[0]

    async def writer(number: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for sequence in range(1_000_000):
                deletable = sorted(ledger.present)
                deleting = deletable and rng.random() < 0.3
                item_id = rng.choice(deletable) if deleting else f"c{cycle}/w{number}/{sequence}"
                try:
                    if deleting:
                        ledger.present.discard(item_id)  # no other writer deletes it meanwhile
                        response = await http.delete(f"/v1/items/{item_id}")
                        ledger.record_delete(item_id, response.status_code == 204)
                    else:
                        files = {"file": ("i.jpg", image, "image/jpeg")}
                        metadata = {"metadata": json.dumps({"key": item_id})}
                        response = await http.put(
                            f"/v1/items/{item_id}", files=files, data=metadata
                        )
                        ledger.record_put(item_id, response.status_code in (200, 201))
                except httpx.HTTPError:  # the kill: this one's outcome is unknown
                    if deleting:
                        ledger.record_delete(item_id, answered=False)
                    else:
                        ledger.record_put(item_id, answered=False)
                    return

    await asyncio.gather(*(writer(number) for number in range(clients)))


async def verify(url: str, ledger: Ledger, everything: bool = False) -> None:
    """Check the items touched since the last check (or all of them) against the ledger."""
    scope = None if everything else ledger.touched
    ledger.touched = set()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        semaphore = asyncio.Semaphore(16)

        async def status(item_id: str) -> int:
            """200 if the item is stored and the index finds it, 404 if neither; else what
            was found where."""
            stored = await answer(f"/v1/items/{item_id}", {})
            searched = await answer(
                f"/v1/items/{ANCHOR}/similar", {"k": 1, "filter": json.dumps({"key": item_id})}
            )
            indexed = searched.status_code == 200 and bool(searched.json()["results"])
            if stored.status_code == 200:
                return 200 if indexed else 299  # stored, but no search finds it
            if stored.status_code == 404:
                return 499 if indexed else 404  # 499: deleted, but a search still finds it
            return stored.status_code

        async def answer(path: str, params: dict[str, str | int]) -> httpx.Response:
            # 503 says nothing about the item: with workers, one that has just restarted
            # answers it until it reaches the index worker. Ask again until it knows.
            async with semaphore:
                for _ in range(100):
                    response = await http.get(path, params=params)
                    if response.status_code != 503:
                        return response
                    await asyncio.sleep(0.1)
                return response

        present = sorted(ledger.present if scope is None else ledger.present & scope)
        codes = await asyncio.gather(*map(status, present))
        ledger.lost_writes += [
            f"{i} ({code})" for i, code in zip(present, codes, strict=True) if code != 200
        ]
        gone = ledger.deleted - ledger.cut_off
        deleted = sorted(gone if scope is None else gone & scope)
        codes = await asyncio.gather(*map(status, deleted))
        ledger.revived_deletes += [
            f"{i} ({code})" for i, code in zip(deleted, codes, strict=True) if code != 404
        ]


async def churn_then_kill(
    service: subprocess.Popen[bytes],
    url: str,
    ledger: Ledger,
    clients: int,
    cycle: int,
    rng: random.Random,
    kill_after_s: float,
    busy_index: bool,
) -> None:
    writers = asyncio.create_task(churn(url, ledger, clients, cycle, rng))
    await asyncio.sleep(kill_after_s)
    if await building(url, wait_s=BUILD_WAIT_S if busy_index else 0):
        ledger.kills_during_builds += 1
    service.kill()  # SIGKILL; worker processes die with it (PR_SET_PDEATHSIG)
    await writers


async def building(url: str, wait_s: float) -> bool:
    """Whether a background index build is running, asking for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(base_url=url, timeout=0.5) as http:
        while True:
            try:
                if (await http.get("/v1/index")).json()["building"]:
                    return True
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # too busy to say
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)


def run_cycles(
    cycles: int, clients: int, workers: int, seed: int, data_dir: Path, busy_index: bool = True
) -> Ledger:
    rng = random.Random(seed)
    ledger = Ledger()
    env = (
        os.environ
        | LITE0_ENV
        | {
            "RESNET_SERVE_DATA_DIR": str(data_dir),
            "RESNET_SERVE_WORKERS": str(workers),
            "RESNET_SERVE_UI": "false",
        }
        | (BUSY_INDEX if busy_index else {})
    )
    for cycle in range(cycles):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        service = start_service(env, port)
        try:
            if cycle == 0:
                asyncio.run(put_anchor(url))
            asyncio.run(verify(url, ledger))  # what the last kill left
            kill_after = rng.uniform(0.5, 4.0)
            asyncio.run(
                churn_then_kill(service, url, ledger, clients, cycle, rng, kill_after, busy_index)
            )
        finally:
            service.kill()
            service.wait(timeout=30)
        print(
            f"cycle {cycle + 1}/{cycles}: killed after {kill_after:.1f} s "
            f"({ledger.kills_during_builds} kills so far during an index build); acknowledged "
            f"{ledger.writes} writes, {ledger.deletes} deletes; lost {len(ledger.lost_writes)}, "
            f"revived {len(ledger.revived_deletes)}",
            *ledger.lost_writes[-3:],
            *ledger.revived_deletes[-3:],
            flush=True,
        )
    port = free_port()
    service = start_service(env, port)
    try:
        asyncio.run(verify(f"http://127.0.0.1:{port}", ledger, everything=True))
    finally:
        service.kill()
        service.wait(timeout=30)
    return ledger


async def put_anchor(url: str) -> None:
    """The item whose neighbours the checks ask for; never deleted."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        files = {"file": ("a.jpg", base_jpegs(160)[1], "image/jpeg")}
        (await http.put(f"/v1/items/{ANCHOR}", files=files)).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="RESNET_SERVE_WORKERS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-index", action="store_true", help="default index settings")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="resnet-serve-crash-") as data_dir:
        ledger = run_cycles(
            args.cycles,
            args.clients,
            args.workers,
            args.seed,
            Path(data_dir),
            busy_index=not args.quiet_index,
        )
    print(
        f"{args.cycles} cycles in {time.perf_counter() - started:.0f} s: "
        f"{ledger.writes} acknowledged writes, {ledger.deletes} acknowledged deletes, "
        f"{len(ledger.cut_off)} cut off by a kill (not checked), "
        f"{ledger.kills_during_builds} kills during an index build; "
        f"{len(ledger.lost_writes)} acknowledged writes lost, "
        f"{len(ledger.revived_deletes)} acknowledged deletes undone"
    )
    if ledger.lost_writes or ledger.revived_deletes:
        print("LOST:", ledger.lost_writes[:10], "REVIVED:", ledger.revived_deletes[:10])
        raise SystemExit(1)


if __name__ == "__main__":
    main()

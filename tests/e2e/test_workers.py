"""The process split, for real: a supervisor, a model worker, an index worker, 2 HTTP workers;
model versions hosted by the model worker."""

import asyncio
import contextlib
import itertools
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import redis
import tritonclient.grpc as grpc_client

from loadtest.common.images import unique_jpegs
from loadtest.common.processes import free_port
from loadtest.common.synthetic_head import write_head
from tests.e2e.server import Server, metric, start_server
from tests.machine_speed import seconds_for_one_new_image
from tests.photos import PHOTO_NAMES, encode, jpeg, photo
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

WORKERS = {"RESNET_SERVE_WORKERS": "2"}


def workers(server: Server, role: str) -> list[psutil.Process]:
    """The live workers of a role (a killed one the supervisor has not reaped yet is not)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if f"service.workers {role}" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass
    return found


def wait_ready(url: str, timeout_s: float = 60) -> None:
    """Until both HTTP workers answer ready (each /readyz reaches whichever accepts it)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while streak < 10:
        assert time.monotonic() < deadline, "service not ready again"
        try:
            ok = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            ok = False
        streak = streak + 1 if ok else 0
        time.sleep(0.05 if ok else 0.2)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> "Server":
    """One service for the tests that kill its workers: each waits until it is whole again."""
    server = start_server(tmp_path_factory.mktemp("split"), WORKERS)
    wait_ready(server.url)
    yield server  # type: ignore[misc]
    assert server.stop() == 0, server.log()[-3000:]  # SIGTERM: a clean stop, versions and all


def test_classify_embed_items_and_search_through_two_workers(tmp_path: Path) -> None:
    # JPEGs cross as bytes for the model worker to decode (as on CUDA); the PNG as pixels.
    grpc_port = free_port()
    env = {"RESNET_SERVE_JPEG_DECODE": "device", "RESNET_SERVE_GRPC_PORT": str(grpc_port)}
    server = start_server(tmp_path, WORKERS | env)
    try:
        wait_ready(server.url)
        round_trip(server)
        inference_protocol(server, f"127.0.0.1:{grpc_port}")
        # Only the model worker loads torch (about 600 MB and seconds of start-up each).
        for role in ("http", "index", "model"):
            loaded = [torch_is_loaded(worker.pid) for worker in workers(server, role)]
            assert loaded == [role == "model"] * len(loaded), (role, loaded)
    finally:
        server.stop()


def inference_protocol(server: Server, grpc_address: str) -> None:
    """Both faces of the inference protocol through the HTTP workers: each serves the gRPC
    port too (SO_REUSEPORT), with the model in the model worker."""
    assert server.log().count("inference protocol over gRPC on") == 2
    data = np.array([[jpeg("coffee")]], dtype=np.object_)
    for _ in range(4):  # new connections: the kernel spreads them over both workers
        with grpc_client.InferenceServerClient(grpc_address) as client:
            tensor = grpc_client.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(data)
            wanted = [grpc_client.InferRequestedOutput("PROBABILITIES", class_count=1)]
            top = client.infer("resnet-serve", [tensor], outputs=wanted).as_numpy("PROBABILITIES")
            assert top[0][0].decode().endswith(":espresso")
    rest = httpx.get(f"{server.url}/v2/models/resnet-serve").json()
    assert rest["platform"] == "resnet-serve:tf_efficientnet_lite0"


def torch_is_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def round_trip(split: Server) -> None:
    url = split.url
    assert len(workers(split, "http")) == 2 and len(workers(split, "model")) == 1
    files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
    classify = httpx.post(f"{url}/v1/classify", files=files).json()
    assert classify["predictions"][0]["label"] == "espresso"
    png = {"file": ("coffee.png", encode(photo("coffee"), "PNG"), "image/png")}
    assert httpx.post(f"{url}/v1/classify", files=png).json()["predictions"][0]["label"] == (
        "espresso"
    )
    # Inspections run in the model worker, reached from whichever HTTP worker answers.
    assert httpx.get(f"{url}/v1/model").json()["stages"][-1]["shape"] == [320, 7, 7]
    cam = httpx.post(f"{url}/v1/explain", params={"format": "json"}, files=files, timeout=60)
    assert cam.json()["label"] == "espresso"
    bad = httpx.post(f"{url}/v1/explain", params={"layer": "nope"}, files=files, timeout=60)
    assert bad.status_code == 422 and "not a stage" in bad.json()["error"]["message"]
    embed = httpx.post(f"{url}/v1/embed", files=files).json()
    assert embed["dim"] == 1280 and embed["cache"] in ("hit", "miss")
    for name in ("coffee", "chelsea", "rocket"):
        put = httpx.put(
            f"{url}/v1/items/photos/{name}",
            files={"file": (f"{name}.jpg", jpeg(name), "image/jpeg")},
            data={"metadata": f'{{"name": "{name}"}}'},
        )
        assert put.status_code == 201, put.text
    found = httpx.post(f"{url}/v1/search?k=2", files=files).json()["results"]
    assert found[0]["id"] == "photos/coffee" and found[0]["metadata"] == {"name": "coffee"}
    similar = httpx.get(f"{url}/v1/items/photos/chelsea/similar?k=5").json()["results"]
    assert {hit["id"] for hit in similar} == {"photos/coffee", "photos/rocket"}
    assert httpx.get(f"{url}/v1/index").json()["count"] == 3
    assert httpx.delete(f"{url}/v1/items/photos/rocket").status_code == 204
    assert httpx.get(f"{url}/v1/items/photos/rocket").status_code == 404
    text = httpx.get(f"{url}/metrics").text
    # Every worker's requests counted in one place, whichever worker serves /metrics.
    assert metric(text, "http_requests_total", method="POST", route="/v1/classify") == 2
    assert metric(text, "http_requests_total", method="PUT", status="201") == 3
    assert metric(text, "service_processes") == 5  # supervisor, model, index, 2 HTTP
    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "batcher_batch_size_count") >= 4


@pytest.fixture
def patient(tmp_path: Path) -> "Server":
    """Two workers whose model takes a long backlog: no latency-target refusal on a slow
    machine (this test is about joining, not admission)."""
    server = start_server(tmp_path, WORKERS | {"RESNET_SERVE_TARGET_LATENCY_MS": "120000"})
    wait_ready(server.url)
    yield server  # type: ignore[misc]
    server.stop()


def test_an_image_sent_to_both_workers_at_once_runs_the_model_once(patient: Server) -> None:
    split = patient
    images = unique_jpegs(tag="single-flight")
    backlog = [next(images) for _ in range(48)]  # keeps the copies below in flight together
    same = next(images)
    runs = "batcher_batch_size_sum"  # images the model has run
    before = metric(httpx.get(f"{split.url}/metrics").text, runs)

    async def post(data: bytes) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as http:  # a connection each: both workers
            return await http.post(
                f"{split.url}/v1/classify", files={"file": ("x.jpg", data, "image/jpeg")}
            )

    async def backlog_waits() -> None:
        """Until images of the backlog wait at the model: copies sent then queue behind them
        together, whichever worker is slower to send its own (a busy machine)."""
        async with httpx.AsyncClient(timeout=30) as http:
            while True:  # bounded by the scenario's timeout
                text = (await http.get(f"{split.url}/metrics")).text
                if metric(text, "model_slots_in_use") >= 16:
                    return
                await asyncio.sleep(0.005)

    async def scenario() -> list[httpx.Response]:
        queued = [asyncio.create_task(post(data)) for data in backlog]
        await asyncio.wait_for(backlog_waits(), timeout=30)
        copies = await asyncio.gather(*(post(same) for _ in range(16)))
        return [*await asyncio.gather(*queued), *copies]

    responses = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 64
    copies = responses[48:]
    assert all(r.json()["predictions"] == copies[0].json()["predictions"] for r in copies)
    # One copy ran; the others joined it, in their own worker or in the model worker.
    assert [r.headers["x-cache"] for r in copies].count("miss") == 1
    after = metric(httpx.get(f"{split.url}/metrics").text, runs)
    assert after - before == 48 + 1


async def _load(url: str, seconds: float, clients: int) -> Counter[str]:
    """Closed-loop classify of unique images; outcome per request: status or error type."""
    outcomes: Counter[str] = Counter()
    images = unique_jpegs()
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(timeout=20) as http:
            while time.monotonic() < stop_at:
                data = next(images)
                try:
                    response = await http.post(
                        f"{url}/v1/classify", files={"file": ("x.jpg", data, "image/jpeg")}
                    )
                    outcomes[str(response.status_code)] += 1
                except httpx.TimeoutException:
                    outcomes["timeout"] += 1
                except httpx.TransportError:
                    outcomes["connection lost"] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


async def _kill_later(delay_s: float, process: psutil.Process) -> None:
    await asyncio.sleep(delay_s)
    process.send_signal(signal.SIGKILL)


def test_kill_9_of_a_worker_and_of_the_model_worker_under_load(split: Server) -> None:
    wait_ready(split.url)
    (http_worker, _), (model,) = workers(split, "http"), workers(split, "model")

    async def scenario() -> Counter[str]:
        load = asyncio.create_task(_load(split.url, seconds=10, clients=6))
        await _kill_later(1.5, http_worker)
        await _kill_later(2.0, model)
        return await load

    outcomes = asyncio.run(scenario())
    # Successes, clear 503s while the model worker was down, and the requests that were on the
    # killed HTTP worker's connections; never a hang, never another error.
    assert set(outcomes) <= {"200", "503", "connection lost"}, outcomes
    assert outcomes["200"] > 0 and outcomes["503"] > 0, outcomes
    assert outcomes["connection lost"] <= 6, outcomes
    wait_ready(split.url)
    assert len(workers(split, "http")) == 2 and len(workers(split, "model")) == 1
    files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
    assert httpx.post(f"{split.url}/v1/classify", files=files).status_code == 200
    assert "model-0 (pid" in split.log() and "http-" in split.log()
    # The gauges sum or max the live processes only: no series of the dead ones stays.
    text = httpx.get(f"{split.url}/metrics").text
    for gauge in ("batcher_queue_depth", "batcher_hung", "cache_circuit_open"):
        series = [line for line in text.splitlines() if line.startswith(gauge + "{")]
        assert not any(
            f'pid="{dead.pid}"' in line for dead in (http_worker, model) for line in series
        )


def test_a_replacement_http_worker_takes_requests_only_once_it_reaches_the_model(
    split: Server,
) -> None:
    wait_ready(split.url)
    """Connections wait in the shared listening socket while a worker restarts; the one that
    replaces it must not take them before it can answer them (it would answer 503)."""
    http_worker = workers(split, "http")[0]
    cmdline = http_worker.cmdline()
    name = cmdline[cmdline.index("--name") + 1]
    outcomes: Counter[str] = Counter()
    images = unique_jpegs(tag="replacement")

    async def client(stop_at: float) -> None:
        # A new connection for every request: the replacement takes its share at once.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=20, limits=limits) as http:
            while time.monotonic() < stop_at:
                files = {"file": ("x.jpg", next(images), "image/jpeg")}
                try:
                    response = await http.post(f"{split.url}/v1/classify", files=files)
                    outcomes[str(response.status_code)] += 1
                except httpx.TransportError:
                    outcomes["connection lost"] += 1

    def replacement_log() -> list[str]:
        """The log lines of the killed worker's successor."""
        lines = split.log().splitlines()
        died = next((i for i, line in enumerate(lines) if f"pid {http_worker.pid})" in line), None)
        return [] if died is None else [line for line in lines[died:] if f"[{name}]" in line]

    def served_by_replacement() -> list[str]:
        return [line for line in replacement_log() if '"POST /v1/classify HTTP/1.1" 200' in line]

    async def scenario() -> None:
        stop_at = time.monotonic() + 90
        load = [asyncio.create_task(client(stop_at)) for _ in range(4)]
        await _kill_later(1.0, http_worker)
        while not any("Application startup complete" in line for line in replacement_log()):
            assert time.monotonic() < stop_at - 10, "the killed HTTP worker was not replaced"
            await asyncio.sleep(0.1)
        # It takes its share of the new connections: wait for it (a loaded machine is slow).
        while len(served_by_replacement()) < 5:
            if time.monotonic() > stop_at:
                break  # the assertion below says what it served
            await asyncio.sleep(0.1)
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)

    asyncio.run(scenario())
    assert len(served_by_replacement()) >= 5, outcomes
    # Only the requests on the killed worker's own connections are lost.
    assert set(outcomes) <= {"200", "connection lost"}, outcomes
    assert outcomes["connection lost"] <= 4, outcomes


def upload(name: str) -> dict[str, Any]:
    return {"file": (f"{name}.jpg", encode(photo(name)), "image/jpeg")}


def wait_for(http: httpx.Client, name: str, state: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        answer = http.get("/v1/models")
        if answer.status_code == 200:
            found = next(v for v in answer.json()["versions"] if v["name"] == name)
            if found["state"] == state:
                return
            assert found["state"] != "failed", found
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


def embedding(http: httpx.Client, name: str, version: str) -> np.ndarray:
    answer = http.post("/v1/embed", params={"version": version}, files=upload(name))
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == version
    return np.array(answer.json()["embedding"])


def answered_by(http: httpx.Client, times: int = 8) -> set[str]:
    """Which versions answered `times` classifications (spread over both HTTP workers: each
    request is a new connection)."""
    seen = set()
    for _ in range(times):
        answer = httpx.post(f"{http.base_url}/v1/classify", files=upload("coffee"), timeout=60)
        assert answer.status_code == 200, answer.text
        seen.add(answer.headers["x-model-version"])
    return seen


def eventually(condition: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_versions_in_the_first_model_worker_switch_every_http_worker(split: Server) -> None:
    """The first model worker hosts the versions, the index worker holds each one's index,
    and both HTTP workers switch with the live one. A kill -9 of the model worker and of the
    index worker leaves the live version serving again."""
    server = split
    wait_ready(server.url)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for name in PHOTO_NAMES:
            assert http.put(f"/v1/items/{name}", files=upload(name)).status_code == 201
        before = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]

        added = http.post("/v1/models", json={"name": "v2", "weights": "random"})
        assert added.status_code == 202, added.text
        assert http.post("/v1/models", json={"name": "v2", "weights": "x"}).status_code == 409
        wait_for(http, "v2", "ready")

        # Pinned to v2: the query vector and the index searched are both v2's.
        eventually(
            lambda: (
                http.post("/v1/embed", params={"version": "v2"}, files=upload("coffee")).status_code
                == 200
            ),
            "every HTTP worker sees v2 ready",
        )
        query = embedding(http, "coffee", "v2")
        hits = http.post("/v1/search", params={"version": "v2"}, files=upload("coffee"))
        assert hits.headers["x-model-version"] == "v2"
        assert len(hits.json()["results"]) == len(PHOTO_NAMES)
        for hit in hits.json()["results"]:
            item = embedding(http, hit["id"], "v2")
            assert hit["score"] == pytest.approx(float(query @ item), abs=2e-3)

        # A write to the live version reaches v2 (it follows in the model worker).
        assert http.put("/v1/items/late", files=upload("rocket")).status_code == 201
        eventually(
            lambda: http.get("/v1/items/late/similar", params={"version": "v2"}).status_code == 200,
            "the late item in v2",
        )

        assert http.post("/v1/models/v2/activate").json()["live"] == "v2"
        assert answered_by(http) == {"v2"}  # both HTTP workers, from the switch on
        after = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]
        assert after != before

        # kill -9 of the model worker, then of the index worker: v2 serves again.
        for role in ("model", "index"):
            (victim,) = workers(server, role)
            victim.send_signal(signal.SIGKILL)
            eventually(
                lambda: http.post("/v1/search", files=upload("coffee")).status_code == 200,
                f"search after the {role} worker's restart",
            )
            searched = http.post("/v1/search", files=upload("coffee"))
            assert searched.headers["x-model-version"] == "v2"
            assert searched.json()["results"][0]["id"] == "coffee"
        assert http.get("/v1/models").json()["live"] == "v2"
        wait_for(http, "default", "ready")  # loaded again beside v2, following it

        one_image_s = seconds_for_one_new_image(http)
        started = time.monotonic()
        assert http.post("/v1/models/default/activate").json()["live"] == "default"
        assert time.monotonic() - started < max(1.0, 10 * one_image_s)  # a pointer swap
        assert answered_by(http) == {"default"}
        again = http.post("/v1/classify", files=upload("coffee")).json()["predictions"]
        assert again == before

        assert http.delete("/v1/models/v2").status_code == 204
        gone = http.post("/v1/classify", params={"version": "v2"}, files=upload("coffee"))
        assert gone.status_code == 422, gone.text


def test_the_model_workers_watchdog_turns_readiness_red_while_a_batch_overruns(
    tmp_path: Path,
) -> None:
    # A bound of 1 ms: every batch overruns it while it runs, and is over soon after.
    server = start_server(tmp_path, WORKERS | {"RESNET_SERVE_WATCHDOG_S": "0.001"})
    try:
        wait_ready(server.url)

        async def scenario() -> tuple[Counter[str], list[httpx.Response]]:
            load = asyncio.create_task(_load(server.url, seconds=6, clients=6))
            red: list[httpx.Response] = []
            async with httpx.AsyncClient(timeout=5) as http:
                while not load.done():
                    ready = await http.get(f"{server.url}/readyz")
                    red += [ready] if ready.status_code != 200 else []
                    await asyncio.sleep(0.02)
            return await load, red

        outcomes, red = asyncio.run(scenario())
        # Images that came while a batch overran: 503 at once, not queued behind it.
        assert set(outcomes) == {"200", "503"}, outcomes
        assert red, "/readyz stayed green while batches overran the watchdog"
        assert all(r.status_code == 503 and "watchdog" in r.text for r in red)
        assert "the model looks hung" in server.log()
        assert metric(httpx.get(f"{server.url}/metrics").text, "batcher_hangs_total") > 0
        # Judged live, not from the last /readyz: one image at a time never waits on a batch.
        files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
        assert [
            httpx.post(f"{server.url}/v1/classify", files=files).status_code for _ in range(8)
        ] == [200] * 8
        wait_ready(server.url)  # green again once the model is idle
    finally:
        server.stop()


def test_acknowledged_writes_survive_kill_9_of_everything(tmp_path: Path) -> None:
    server = start_server(tmp_path, WORKERS)
    wait_ready(server.url)
    acknowledged: list[str] = []
    ids = (f"items/{i}" for i in itertools.count())
    images = unique_jpegs()

    killed = asyncio.Event()

    async def writer() -> None:
        async with httpx.AsyncClient(timeout=20) as http:
            while not killed.is_set():
                item_id = next(ids)
                files = {"file": ("x.jpg", next(images), "image/jpeg")}
                try:
                    response = await http.put(f"{server.url}/v1/items/{item_id}", files=files)
                except httpx.TransportError:
                    continue  # killed mid-write: not acknowledged, may or may not be there
                if response.status_code == 201:
                    acknowledged.append(item_id)

    async def scenario() -> None:
        writers = [asyncio.create_task(writer()) for _ in range(4)]
        deadline = time.monotonic() + 120  # a few acknowledged writes, however slow the machine
        while len(acknowledged) < 5:
            assert time.monotonic() < deadline, "writes were not acknowledged"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # more in flight when the kill comes
        family = [psutil.Process(server.process.pid), *workers(server, "")]
        for process in family:  # a worker may be gone already: it dies with the supervisor
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        killed.set()  # writes in flight fail with the connection; no new ones
        await asyncio.gather(*writers)

    try:
        asyncio.run(scenario())
    finally:
        server.process.kill()  # if the scenario failed before it did
        server.process.wait(timeout=10)
    assert len(acknowledged) >= 5
    restarted = start_server(tmp_path, WORKERS)
    try:
        wait_ready(restarted.url)
        for item_id in acknowledged:
            assert httpx.get(f"{restarted.url}/v1/items/{item_id}").status_code == 200, item_id
        assert httpx.get(f"{restarted.url}/v1/index").json()["count"] >= len(acknowledged)
    finally:
        restarted.stop()


def test_slots_are_released_after_cancelled_and_refused_requests(tmp_path: Path) -> None:
    # Four slots per worker and a queue of four: most of 32 clients are refused (429).
    server = start_server(tmp_path, WORKERS | {"RESNET_SERVE_QUEUE_SIZE": "4"})
    wait_ready(server.url)
    images = unique_jpegs()
    outcomes: Counter[str] = Counter()

    async def client(number: int, requests: int) -> None:
        # Every third client gives up after 30 ms: its requests are cancelled mid-flight.
        timeout = 0.03 if number % 3 == 0 else 20
        async with httpx.AsyncClient(timeout=timeout) as http:
            for _ in range(requests):
                try:
                    response = await http.post(
                        f"{server.url}/v1/classify",
                        files={"file": ("x.jpg", next(images), "image/jpeg")},
                    )
                    outcomes[str(response.status_code)] += 1
                except httpx.TimeoutException:
                    outcomes["cancelled"] += 1

    async def scenario() -> None:
        await asyncio.gather(*(client(n, 35) for n in range(32)))

    try:
        asyncio.run(scenario())
        assert sum(outcomes.values()) == 32 * 35
        assert outcomes["200"] > 0 and outcomes["429"] > 0 and outcomes["cancelled"] > 0
        assert set(outcomes) <= {"200", "429", "cancelled"}, outcomes
        deadline = time.monotonic() + 10
        while (in_use := metric(httpx.get(f"{server.url}/metrics").text, "model_slots_in_use")) > 0:
            assert time.monotonic() < deadline, f"{in_use} slots never released"
            time.sleep(0.2)  # cancelled calls settle when the model worker answers them
        files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
        assert httpx.post(f"{server.url}/v1/classify", files=files).status_code == 200
    finally:
        server.stop()


def test_redis_is_one_cache_for_every_worker(tmp_path: Path, redis_server: RedisServer) -> None:
    server = start_server(tmp_path, WORKERS | {"RESNET_SERVE_REDIS_URL": redis_server.url})
    try:
        wait_ready(server.url)
        files = {"file": ("coffee.jpg", jpeg("coffee"), "image/jpeg")}
        url = f"{server.url}/v1/classify"
        assert httpx.post(url, files=files).headers["x-cache"] == "miss"
        deadline = time.monotonic() + 10
        while httpx.post(url, files=files).headers["x-cache"] != "hit":  # written behind
            assert time.monotonic() < deadline, "the result never reached the cache"
            time.sleep(0.05)
        # New connections land on either worker; with one shared cache every one is a hit
        # (per-worker memory caches would each miss once).
        assert [httpx.post(url, files=files).headers["x-cache"] for _ in range(12)] == ["hit"] * 12
        keys = redis.Redis.from_url(redis_server.url).keys("resnet-serve:*")
        assert len(keys) == 1
    finally:
        server.stop()


def test_a_head_attached_through_one_http_worker_answers_in_both(
    split: Server, tmp_path: Path
) -> None:
    wait_ready(split.url)
    fingerprint = httpx.get(f"{split.url}/readyz", timeout=30).json()["fingerprint"]
    head = write_head(tmp_path / "head", classes=6, dim=1280, base_fingerprint=fingerprint)
    attached = httpx.put(f"{split.url}/v1/heads/six", json={"source": str(head)}, timeout=30)
    assert attached.status_code == 201, attached.text
    # A new connection each: the kernel hands them to either HTTP worker.
    for n in range(8):
        files = {"file": ("cup.jpg", jpeg("coffee") + bytes([n]), "image/jpeg")}
        answer = httpx.post(f"{split.url}/v1/classify", files=files, timeout=60).json()
        assert len(answer["heads"]["six"]["predictions"]) == 5
    assert httpx.delete(f"{split.url}/v1/heads/six", timeout=30).status_code == 204

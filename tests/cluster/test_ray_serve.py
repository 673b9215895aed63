"""The Ray Serve application on a real local multi-node Ray cluster (one head, one worker
node, both on this machine), started once for the module: the API through the Ray ingress,
and the same promises as on one machine when a Model replica, a worker node or the Index
replica goes away, and through a rolling update of the model."""

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
import tritonclient.grpc as grpc_client
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.cluster_utils import Cluster
from tritonclient.utils import InferenceServerException

from loadtest.common.otlp_receiver import OtlpReceiver, ReceivedSpan
from loadtest.common.processes import LITE0_ENV, free_port
from service.cluster import grpc_ingress
from service.cluster.deployments import INDEX, INGRESS, MODEL, application
from service.cluster.grpc_ingress import SERVICER_FUNCTION
from service.oip.grpc_face import InferenceServicer
from service.transport.ray_link import RayLink
from service.transport.remote_index import RemoteIndex
from tests.milvus_server import MilvusServer
from tests.photos import encode, photo

pytestmark = pytest.mark.slow

APP = "resnet-serve"
HEAD = "head_node"  # a custom resource only the head has: Ingress and Index live there


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    """Every replica's spans (tracing is on for the module's cluster)."""
    receiving = OtlpReceiver()
    yield receiving
    receiving.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("ray-data")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {HEAD: 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    env = LITE0_ENV | {
        "RESNET_SERVE_DATA_DIR": str(data),
        "RESNET_SERVE_THREADS": "1",
        "RESNET_SERVE_DECODE_THREADS": "1",
        "RESNET_SERVE_INDEX_SNAPSHOT_EVERY": "20",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "RESNET_SERVE_RAY_METRICS_EVERY_S": "0.5",
    }
    ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": free_port()},
        grpc_options={"port": free_port(), "grpc_servicer_functions": [SERVICER_FUNCTION]},
        proxy_location="HeadOnly",
    )
    started = time.monotonic()
    deploy()
    DEPLOY_SECONDS.append(time.monotonic() - started)
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def deploy(**model_env: str) -> None:
    """The application with two Model replicas, one per node; `model_env` changes the Model
    deployment's config (a new version of it, rolled out replica by replica)."""
    on_head = {"num_cpus": 0.5, "resources": {HEAD: 0.1}}
    model = MODEL.options(
        num_replicas=2,
        max_replicas_per_node=1,
        health_check_period_s=1,
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": model_env}},
    )
    serve.run(
        application(
            model,
            INDEX.options(ray_actor_options=on_head),
            INGRESS.options(ray_actor_options=on_head),
        ),
        name=APP,
        route_prefix="/",
    )


def url() -> str:
    return f"http://127.0.0.1:{serve.context._get_global_client().http_config.port}"


def images(count: int) -> list[bytes]:
    """Distinct JPEGs (no cache hits), each a photo with a few changed pixels."""
    rng = np.random.default_rng(7)
    base = photo("coffee")
    out = []
    for _ in range(count):
        pixels = base.copy()
        pixels[:4, :64] = rng.integers(0, 255, size=(4, 64, 3), dtype=np.uint8)
        out.append(encode(pixels))
    return out


def upload(data: bytes) -> dict[str, Any]:
    return {"file": ("photo.jpg", data, "image/jpeg")}


def replicas(deployment: str) -> dict[str, str]:
    """Live replicas of a deployment: actor name -> the id of the node it runs on."""
    return replicas_of(APP, deployment)


def replicas_of(app: str, deployment: str) -> dict[str, str]:
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    live: dict[str, str] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and actor["name"].startswith(prefix):
            handle = ray.get_actor(actor["name"], namespace="serve")
            where = handle.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
            try:
                live[actor["name"]] = ray.get(where, timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                continue  # going away
    return live


# How long deploying the application took on this machine under its present load: replicas
# that come back are given a multiple of it, not a wall-clock guess.
DEPLOY_SECONDS: list[float] = []


def allowance(floor_s: float) -> float:
    """At least `floor_s`, and three times what deploying everything took here."""
    return max(floor_s, 3 * max(DEPLOY_SECONDS, default=0.0))


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


async def load(seconds: float, clients: int, during: Any = None) -> Counter[str]:
    """Classify distinct images from `clients` clients for `seconds`; `during()` runs in a
    thread once the load is on. Counts status codes; a request that hangs past 90 s counts
    as 'hang' (a new replica loading on a busy 2-core machine may keep some waiting for
    tens of seconds), any other client error by its type."""
    codes: Counter[str] = Counter()
    pictures = images(16)
    stop_at = time.monotonic() + seconds

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=url(), timeout=90) as http:
            i = number
            while time.monotonic() < stop_at:
                i += clients
                try:
                    response = await http.post("/v1/classify", files=upload(pictures[i % 16]))
                    codes[str(response.status_code)] += 1
                    if response.status_code not in (200, 503):
                        codes[f"{response.status_code}: {response.text[:200]}"] += 1
                except httpx.TimeoutException:
                    codes["hang"] += 1
                except httpx.HTTPError as exc:
                    codes[type(exc).__name__] += 1

    async def trigger() -> None:
        await asyncio.sleep(seconds / 4)
        if during is not None:
            await asyncio.to_thread(during)

    await asyncio.gather(trigger(), *(client(n) for n in range(clients)))
    return codes


def test_the_api_and_the_web_page_through_the_ray_ingress(cluster: Cluster) -> None:
    photo_jpeg = encode(photo("coffee"))
    with httpx.Client(base_url=url(), timeout=60) as http:
        classified = http.post("/v1/classify", files=upload(photo_jpeg))
        assert classified.status_code == 200, classified.text
        assert classified.json()["model"].startswith("tf_efficientnet_lite0")
        embedded = http.post("/v1/embed", files=upload(photo_jpeg)).json()
        assert len(embedded["embedding"]) == 1280
        assert http.put("/v1/items/cup", files=upload(photo_jpeg)).status_code in (200, 201)
        hits = http.post("/v1/search", files=upload(photo_jpeg)).json()["results"]
        assert hits[0]["id"] == "cup" and hits[0]["score"] > 0.99
        assert http.get("/v1/items/cup/similar").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert "resnet-serve" in http.get("/ui/").text
        assert "http_requests" in http.get("/metrics").text
        bad = http.post("/v1/classify", files=upload(b"not an image"))
        assert bad.status_code == 415 or bad.status_code == 422, bad.text
    # Two Model replicas, one on each node; Ingress and Index on the head.
    assert len(set(replicas("Model").values())) == 2


def test_a_request_through_ray_is_one_trace_across_the_replicas(
    cluster: Cluster, receiver: OtlpReceiver
) -> None:
    files = {"file": ("cup.jpg", images(1)[0] + b"traced", "image/jpeg")}
    headers = {"x-request-id": "traced-on-ray"}
    with httpx.Client(base_url=url(), timeout=60) as http:
        assert http.post("/v1/classify", files=files, headers=headers).status_code == 200
        assert http.post("/v1/search", files=files, headers=headers).status_code == 200

    def of_the_request(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        roots = {s.trace_id for s in spans if s.attributes.get("request_id") == "traced-on-ray"}
        return [s for s in spans if s.trace_id in roots]

    def across(spans: list[ReceivedSpan]) -> bool:
        """Every process's spans are in, the Ingress's too (each process exports on its own
        schedule): the model replica's call and the span it is a child of."""
        received = of_the_request(spans)
        roles = {s.resource.get("resnet_serve.role") for s in received}
        ids = {s.span_id for s in received}
        calls = [s for s in received if s.name == "ray infer"]
        parented = bool(calls) and all(s.parent_span_id in ids for s in calls)
        return {"http", "ray-model", "ray-index"} <= roles and parented

    receiver.wait_for(across, allowance(60))
    spans = of_the_request(receiver.spans)
    by_id = {s.span_id: s for s in spans}
    infer = next(s for s in spans if s.name == "ray infer")
    assert by_id[infer.parent_span_id].name == "model"  # the Ingress's span, through Ray
    assert {s.name for s in spans if s.parent_span_id == infer.span_id} >= {"queue wait", "forward"}
    assert any(s.name == "ray search" for s in spans)


def test_the_inference_protocol_over_grpc_through_rays_proxy(cluster: Cluster) -> None:
    controller = serve.context._get_global_client()._controller
    port = ray.get(controller.get_grpc_config.remote()).port
    with grpc_client.InferenceServerClient(f"127.0.0.1:{port}") as client:
        assert client.is_server_live() and client.is_model_ready("resnet-serve")
        assert set(grpc_ingress.METHODS) <= set(dir(InferenceServicer))
        image = grpc_client.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[encode(photo("coffee"))]], dtype=np.object_))
        top = [grpc_client.InferRequestedOutput("PROBABILITIES", class_count=1)]
        answer = client.infer("resnet-serve", [image], outputs=top)
        assert answer.as_numpy("PROBABILITIES")[0][0].decode().endswith(":espresso")
        assert answer.get_response().model_version == "default"
        image.set_data_from_numpy(np.array([[b"not an image"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="image 0") as bad:
            client.infer("resnet-serve", [image])
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_metadata("other")
        assert missing.value.status() == "StatusCode.NOT_FOUND"


def test_a_killed_model_replica_gives_503s_or_successes_and_comes_back(cluster: Cluster) -> None:
    victim = next(iter(replicas("Model")))

    def kill() -> None:
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    codes = asyncio.run(load(seconds=6, clients=8, during=kill))
    assert set(codes) <= {"200", "503"}, codes
    assert codes["200"] > 0
    wait_until(
        lambda: len(replicas("Model")) == 2 and victim not in replicas("Model"),
        allowance(60),
        "a new Model replica",
    )


def test_removing_a_worker_node_gives_503s_or_successes_and_the_replica_returns(
    cluster: Cluster,
) -> None:
    worker = next(node for node in cluster.worker_nodes)

    codes = asyncio.run(load(seconds=6, clients=8, during=lambda: cluster.remove_node(worker)))
    assert set(codes) <= {"200", "503"}, codes
    assert codes["200"] > 0
    cluster.add_node(num_cpus=1)  # a node comes back (as an autoscaler would add one)
    wait_until(
        lambda: len(set(replicas("Model").values())) == 2,
        allowance(90),
        "a Model replica on the new node",
    )


def test_acknowledged_writes_survive_a_restart_of_the_index_replica(cluster: Cluster) -> None:
    acknowledged: list[str] = []
    pictures = images(8)
    (index_replica,) = replicas("Index")

    async def writes(seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        async with httpx.AsyncClient(base_url=url(), timeout=30) as http:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                item = f"w{n}"
                try:
                    r = await http.put(f"/v1/items/{item}", files=upload(pictures[n % 8]))
                except httpx.HTTPError:
                    continue
                if r.status_code in (200, 201):
                    acknowledged.append(item)
                else:
                    assert r.status_code == 503, r.text

    async def scenario() -> None:
        async def kill_later() -> None:
            await asyncio.sleep(1.5)
            ray.kill(ray.get_actor(index_replica, namespace="serve"), no_restart=True)

        await asyncio.gather(writes(6), kill_later())

    asyncio.run(scenario())
    wait_until(
        lambda: set(replicas("Index")) - {index_replica}, allowance(60), "a new Index replica"
    )
    with httpx.Client(base_url=url(), timeout=30) as http:
        wait_until(
            lambda: http.get("/v1/items/cup").status_code == 200, allowance(60), "the index back"
        )
        missing = [
            item for item in acknowledged if http.get(f"/v1/items/{item}").status_code != 200
        ]
    assert acknowledged and not missing


def test_a_rolling_update_of_the_model_under_load_fails_no_request(cluster: Cluster) -> None:
    before = set(replicas("Model"))
    codes = asyncio.run(
        load(seconds=10, clients=8, during=lambda: deploy(RESNET_SERVE_MAX_WAIT_MS="3"))
    )
    wait_until(
        lambda: not (set(replicas("Model")) & before) and len(replicas("Model")) == 2,
        allowance(90),
        "new replicas",
    )
    assert set(codes) == {"200"}, codes


def test_index_replicas_on_milvus_share_the_items_and_losing_one_loses_nothing(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With INDEX_ENGINE=milvus the Index deployment keeps no files: two replicas, unpinned,
    serve the same items, and a write acknowledged before one is killed is found after."""
    milvus = MilvusServer(tmp_path_factory.mktemp("milvus"))
    env = {
        "RESNET_SERVE_INDEX_ENGINE": "milvus",
        "RESNET_SERVE_MILVUS_URI": milvus.uri,
        # no index files anywhere: a directory no replica can write to
        "RESNET_SERVE_DATA_DIR": "/proc/resnet-serve-has-no-files-here",
    }
    index = INDEX.options(
        num_replicas=2,
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": env}},
    )
    model = serve.get_deployment_handle("Model", app_name=APP)
    try:
        handle = serve.run(index.bind(model), name="milvus-index", route_prefix=None)
        shared = RemoteIndex(RayLink(handle, "Index"))
        vectors = np.eye(8, 1280, dtype=np.float32)

        async def write_then_read() -> tuple[set[str], list[str]]:
            for n, vector in enumerate(vectors):
                assert await shared.put(f"m{n}", vector, {"n": n}, None)
            # Each replica answers from the same collection, whichever Serve picks.
            seen = {hit.id for _ in range(8) for hit in await shared.search(vectors[3], k=1)}
            return seen, sorted(replicas_of("milvus-index", "Index"))

        seen, (first, second) = asyncio.run(write_then_read())
        assert seen == {"m3"}
        ray.kill(ray.get_actor(first, namespace="serve"), no_restart=True)

        async def after_the_loss() -> list[int]:
            return [n for n in range(8) if await shared.get(f"m{n}") is None]

        wait_until(
            lambda: first not in replicas_of("milvus-index", "Index"),
            allowance(60),
            "the killed replica gone",
        )
        assert asyncio.run(after_the_loss()) == []
        assert second in replicas_of("milvus-index", "Index")
    finally:
        serve.delete("milvus-index")
        milvus.kill()


def test_a_broken_model_directory_fails_the_deployment_naming_the_field(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A configuration error on Ray is what it is with workers: the deployment fails after
    Ray Serve's bounded constructor retries, with the file and what to do, not a loop."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"format": 1, "num_classes": 3}')
    (broken / "labels.json").write_text('["a", "b", "c"]')
    model = MODEL.options(
        num_replicas=1,
        ray_actor_options={
            "num_cpus": 0,
            "runtime_env": {"env_vars": {"RESNET_SERVE_WEIGHTS": str(broken)}},
        },
    )
    try:
        with pytest.raises(RuntimeError, match="broken-model failed"):
            serve.run(model.bind(), name="broken-model", route_prefix=None)
        why = serve.status().applications["broken-model"].deployments["Model"].message
        assert "config.json" in why and "base_model" in why, why
    finally:
        serve.delete("broken-model")


def test_the_model_replicas_metrics_are_on_the_ingresss_metrics(cluster: Cluster) -> None:
    """One scrape of the Ingress sees every Model replica's own batcher metrics, under
    their own names, each labelled with its replica."""
    pixels = photo("rocket")
    pixels[:2, :32] = np.random.default_rng().integers(0, 255, size=(2, 32, 3), dtype=np.uint8)
    model_replicas = {name.split("#")[-1] for name in replicas("Model")}
    with httpx.Client(base_url=url(), timeout=60) as http:

        def images_run_by_replica() -> dict[str, float]:
            return {
                sample.labels["replica"]: sample.value
                for family in text_string_to_metric_families(http.get("/metrics").text)
                for sample in family.samples
                if sample.name == "batcher_batch_size_sum" and sample.labels["version"] == "default"
            }

        before = sum(images_run_by_replica().values())
        answer = http.post("/v1/classify", files=upload(encode(pixels)))
        assert answer.status_code == 200 and answer.headers["x-cache"] == "miss"
        wait_until(
            lambda: (
                images_run_by_replica().keys() >= model_replicas
                and sum(images_run_by_replica().values()) > before
            ),
            allowance(30),
            "every Model replica's metrics, and the new image, on the Ingress's /metrics",
        )


def test_a_burst_reaches_the_model_replicas_in_fewer_calls_than_images(cluster: Cluster) -> None:
    """Images cross from the Ingress to the Model replicas in batched calls (counted by the
    Ingress), and every image of a burst is answered."""
    rng = np.random.default_rng()
    burst = []
    for _ in range(16):
        pixels = photo("chelsea")
        pixels[:2, :32] = rng.integers(0, 255, size=(2, 32, 3), dtype=np.uint8)
        burst.append(encode(pixels))

    def counted() -> tuple[float, float]:
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(httpx.get(f"{url()}/metrics").text)
            for sample in family.samples
        }
        return samples["model_hop_calls_total"], samples["model_hop_images_total"]

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(base_url=url(), timeout=120) as http:
            answers = await asyncio.gather(
                *(http.post("/v1/classify", files=upload(image)) for image in burst)
            )
        return [answer.status_code for answer in answers]

    calls_before, images_before = counted()
    assert asyncio.run(send_all()) == [200] * 16
    calls_after, images_after = counted()
    assert images_after - images_before == 16
    assert calls_after - calls_before < 16

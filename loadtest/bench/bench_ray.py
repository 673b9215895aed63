"""The Ray Serve application against `resnet-serve serve`, on this machine.

    python -m loadtest.bench.bench_ray compare            # serve vs Ray: 32 clients, 1 client
    python -m loadtest.bench.bench_ray scale              # 1 vs 2 Model replicas on 2 Ray nodes
    python -m loadtest.bench.bench_ray batching           # the service's batcher vs @serve.batch
    python -m loadtest.bench.bench_ray hops               # CPU per image in each process
    python -m loadtest.bench.bench_ray latency            # where one client's time goes
    python -m loadtest.bench.bench_ray background         # what an idle Ray costs serve
    python -m loadtest.bench.bench_ray floor              # one Serve handle call, no work

compare: the same model and backend (RESNET_SERVE_* from the environment over ResNet50 with
random weights on torch fp32, the same compute as the real weights) behind `resnet-serve
serve`, then behind the Ray application on a local Ray (Ingress, Model, Index), in one run:
throughput at 32 closed-loop clients with unique 500-px JPEGs, p50 for one client, and the
CPU every process took during the 32-client window, Ray's own processes (its HTTP proxy;
GCS, raylets, the Serve controller, agents) apart from the replicas.

scale: a local cluster of a head (Ingress, Index) and two worker nodes of one CPU each; the
model is made the bottleneck by a heavy model on one thread per replica (ResNet152 with
random weights, RESNET_SERVE_THREADS=1, batches of 1), so a second replica on the second
node can add what the first cannot. Rounds of 1 and 2 replicas alternate; medians printed.

batching: the same Ray application with its Model replica batching by Ray Serve's
@serve.batch (max_batch_size and wait as the service's settings) instead of the service's
batcher, at 32 clients.

hops: CPU milliseconds per image answered, by process group (Ray's HTTP proxy, each
deployment's replicas, Ray's own processes), for `resnet-serve serve` and then the Ray
application at each of --clients-list (1,16,64); what Ray's hops cost an image is the Ray
application's total less `resnet-serve serve`'s at the same load (the same model work, with
no hop). The Ingress's count of calls to the Model replicas tells how many images a call
carried (model_hop_images_total / model_hop_calls_total).

latency: one client's requests one after another (unique JPEGs), `resnet-serve serve` and
the Ray application both running, measured in alternate rounds (--rounds); each answer's
X-Inference-Time (the forward pass) and X-Total-Time (the app's whole answer) beside the
client's wall time: medians of the forward, of the rest of the app's answer (decode, the hop
to the model and back), and of HTTP in front of the app; over the rounds, the median of the
rounds' medians.

background: `resnet-serve serve` with the Ray application idle beside it, one client, in
rounds with Ray's processes running and frozen (SIGSTOP): what Ray's own activity (its
processes' timers and pollers) costs a forward pass on the same cores, whoever runs it.

floor: what Ray Serve itself costs a call on this machine: one deployment calling another
that returns at once, with payloads of 1 kB and of 1 to 8 images' pixels, by reference (Ray's
actor call) and by value (Serve's gRPC transport); the median round trip. No part of this
project runs in it.
"""

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import psutil

from loadtest.common.images import unique_jpegs
from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, service_at

RESNET_ENV = {
    "RESNET_SERVE_MODEL": "resnet50",
    "RESNET_SERVE_WEIGHTS": "random",
    "RESNET_SERVE_BACKEND": "torch",
    "RESNET_SERVE_PRECISION": "fp32",
    "RESNET_SERVE_UI": "false",
}
HEAVY_ENV = RESNET_ENV | {
    "RESNET_SERVE_MODEL": "resnet152",
    "RESNET_SERVE_THREADS": "1",
    "RESNET_SERVE_MAX_BATCH_SIZE": "1",
}
HEAD = "head_node"
_NOT_RAY = ("other", "gone", "resnet-serve serve")


def service_env() -> dict[str, str]:
    """ResNet50 with random weights on torch fp32, under this environment's RESNET_SERVE_*."""
    return RESNET_ENV | {k: v for k, v in os.environ.items() if k.startswith("RESNET_SERVE_")}


def process_group(process: psutil.Process) -> str:
    """Which part of the system a process is: a replica by deployment, Ray's own, or other."""
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "ServeReplica" in title:
        return "replica " + title.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    if "ProxyActor" in title:
        return "Ray HTTP proxy"
    ray_parts = ("gcs_server", "raylet", "ray::", "ray/dashboard", "ray/_private")
    if any(part in title for part in ray_parts):
        return "Ray control"  # GCS, raylets, the Serve controller, agents, idle workers
    if "service serve" in title or "service.workers" in title:
        return "resnet-serve serve"
    return "other"


def cpu_by_group() -> dict[str, float]:
    """CPU seconds so far of every process on the machine but this one, by group."""
    seconds: dict[str, float] = {}
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        group = process_group(process)
        seconds[group] = seconds.get(group, 0.0) + times.user + times.system
    return seconds


def loaded(
    url: str, clients: int, seconds: float, *, warmup_s: float = 5.0, processes: int = 1
) -> tuple[LoadResult, dict[str, float]]:
    """A closed-loop load, and the cores each group of processes used meanwhile (the load
    processes among "other")."""
    before, started = cpu_by_group(), time.monotonic()
    result = measure_load(url, "/v1/classify", clients, seconds, warmup_s, processes=processes)
    elapsed = time.monotonic() - started
    after = cpu_by_group()
    used = {g: after[g] - before.get(g, 0.0) for g in after}
    # Groups that used a hundredth of a core or more: a short load (the GPU check's rehearsal,
    # 2 s) must still show every process that served it.
    cores = {g: s / elapsed for g, s in used.items() if s / elapsed >= 0.01}
    return result, cores


@contextmanager
def ray_application(
    env: dict[str, str],
    workers: int = 0,
    model_options: dict[str, Any] | None = None,
    model: Any = None,
    direct_ingress: bool = False,
    ingress_replicas: int = 1,
) -> Iterator[str]:
    """The application on a local Ray (`workers`=0: one node of this machine's CPUs), or on a
    head and `workers` one-CPU worker nodes that take the Model replicas. `direct_ingress`:
    Ray Serve's direct ingress, the Ingress replica serving HTTP on its own port, with no
    HTTP proxy in front of it (set before Ray starts: every Ray process reads it then)."""
    port = free_port()
    if direct_ingress:
        os.environ |= {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),
        }
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from service.cluster.deployments import INDEX, INGRESS, MODEL, RAY_PROCESS_ENV, application

    data_dir = env.get("RESNET_SERVE_DATA_DIR") or tempfile.mkdtemp(prefix="resnet-serve-ray-")

    # As deploy/ray/serve.yaml gives them: Ray's settings for the replicas, then the service's.
    runtime_env = {"env_vars": RAY_PROCESS_ENV | env | {"RESNET_SERVE_DATA_DIR": data_dir}}
    cluster = None
    if workers:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "resources": {HEAD: 1}, "include_dashboard": False},
        )
        for _ in range(workers):
            cluster.add_node(num_cpus=1, resources={"model_node": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(
            num_cpus=psutil.cpu_count(),
            runtime_env=runtime_env,
            include_dashboard=False,
            log_to_driver=False,
        )
    proxy_port = free_port() if direct_ingress else port
    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port}, proxy_location="HeadOnly")
    # Logical CPUs, for placement only: several Ingress replicas share the half that one takes.
    on_head: dict[str, Any] = {"num_cpus": 0.5 / ingress_replicas}
    if workers:
        on_head["resources"] = {HEAD: 0.1}
    try:
        serve.run(
            application(
                (model or MODEL).options(**(model_options or {})),
                INDEX.options(ray_actor_options=on_head | {"num_cpus": 0.5}),
                INGRESS.options(ray_actor_options=on_head, num_replicas=ingress_replicas),
            ),
            name="resnet-serve",
            route_prefix="/",
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def row(name: str, result: LoadResult, cores: dict[str, float] | None = None) -> str:
    shown = ", ".join(f"{g} {c:.2f}" for g, c in sorted((cores or {}).items()))
    return (
        f"| {name} | {result.concurrency} | {result.ok_rps:.2f} | {result.p50_ms:.1f} | "
        f"{result.p99_ms:.1f} | {shown} | {result.statuses} |"
    )


HEADER = (
    "| setup | clients | ok rps | p50 ms | p99 ms | cores by process group | statuses |\n"
    "|---|---|---|---|---|---|---|"
)


def compare(args: argparse.Namespace) -> None:
    env = service_env()
    print(HEADER, flush=True)
    with service_at(None, env) as (url, _):
        served, cores = loaded(url, args.clients, args.seconds)
        print(row("resnet-serve serve", served, cores), flush=True)
        single = measure_load(url, "/v1/classify", 1, args.seconds / 2, warmup_s=3.0)
        print(row("resnet-serve serve", single), flush=True)
    with ray_application(
        env, model_options={"ray_actor_options": {"num_cpus": 1}}, direct_ingress=args.direct
    ) as url:
        on_ray, cores = loaded(url, args.clients, args.seconds)
        print(row("Ray Serve application", on_ray, cores), flush=True)
        single_ray = measure_load(url, "/v1/classify", 1, args.seconds / 2, warmup_s=3.0)
        print(row("Ray Serve application", single_ray), flush=True)
    print(
        f"\nRay / serve at {args.clients} clients: {on_ray.ok_rps / served.ok_rps:.2f}; "
        f"p50 added for one client: {single_ray.p50_ms - single.p50_ms:+.1f} ms"
    )


def scale(args: argparse.Namespace) -> None:
    on_workers = {"num_cpus": 1, "resources": {"model_node": 1}}
    rps: dict[int, list[float]] = {1: [], 2: []}
    print(HEADER, flush=True)
    with ray_application(
        HEAVY_ENV,
        workers=2,
        model_options={
            "num_replicas": 1,
            "max_replicas_per_node": 1,
            "ray_actor_options": on_workers,
        },
    ) as url:
        from ray import serve

        from service.cluster.deployments import INDEX, INGRESS, MODEL, application

        on_head = {"num_cpus": 0.5, "resources": {HEAD: 0.1}}
        for _ in range(args.rounds):
            for replicas in (1, 2):
                serve.run(
                    application(
                        MODEL.options(
                            num_replicas=replicas,
                            max_replicas_per_node=1,
                            ray_actor_options=on_workers,
                        ),
                        INDEX.options(ray_actor_options=on_head),
                        INGRESS.options(ray_actor_options=on_head),
                    ),
                    name="resnet-serve",
                    route_prefix="/",
                )
                result, cores = loaded(url, args.clients, args.seconds)
                rps[replicas].append(result.ok_rps)
                print(row(f"{replicas} Model replica(s)", result, cores), flush=True)
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    print(f"\nmedian ok rps: 1 replica {one:.2f}, 2 replicas {two:.2f}: {two / one:.2f}x")


def batching(args: argparse.Namespace) -> None:
    from loadtest.bench.ray_batched_model import RayBatchedModel

    env = service_env()
    print(HEADER, flush=True)
    for name, model in (("service batcher", None), ("@serve.batch", RayBatchedModel)):
        with ray_application(
            env, model=model, model_options={"ray_actor_options": {"num_cpus": 1}}
        ) as url:
            result, cores = loaded(url, args.clients, args.seconds)
            print(row(name, result, cores), flush=True)


def per_image_ms(result: LoadResult, cores: dict[str, float]) -> dict[str, float]:
    """CPU milliseconds each group spent per image answered."""
    return {g: 1000 * c / result.ok_rps for g, c in cores.items()} if result.ok_rps else {}


def hop_calls(url: str) -> tuple[float, float]:
    from loadtest.common.scrape import scrape

    samples = scrape(url)
    return samples.get(("model_hop_calls_total", ()), 0.0), samples.get(
        ("model_hop_images_total", ()), 0.0
    )


def hops(args: argparse.Namespace) -> None:
    env = service_env()
    clients = [int(c) for c in args.clients_list.split(",")]
    totals: dict[tuple[str, int], float] = {}
    print("| setup | clients | ok rps | p50 ms | CPU ms per image, by process group |")
    print("|---|---|---|---|---|")

    def report(setup: str, url: str) -> None:
        for count in clients:
            calls_before, images_before = hop_calls(url)
            result, cores = loaded(url, count, args.seconds)
            calls_after, images_after = hop_calls(url)
            calls, images = calls_after - calls_before, images_after - images_before
            ms = per_image_ms(result, cores)
            totals[(setup, count)] = sum(ms.values())
            shown = ", ".join(f"{g} {v:.1f}" for g, v in sorted(ms.items()))
            carried = f"; {images / calls:.1f} images a call" if calls else ""
            print(
                f"| {setup} | {count} | {result.ok_rps:.2f} | {result.p50_ms:.1f} | "
                f"total {totals[(setup, count)]:.1f}: {shown}{carried} |",
                flush=True,
            )

    with service_at(None, env) as (url, _):
        report("resnet-serve serve", url)
    with ray_application(
        env, model_options={"ray_actor_options": {"num_cpus": 1}}, direct_ingress=args.direct
    ) as url:
        report("Ray application", url)
    for count in clients:
        excess = totals[("Ray application", count)] - totals[("resnet-serve serve", count)]
        print(f"{count} clients: Ray's hops cost {excess:+.1f} ms of CPU an image")


def one_client(url: str, requests: int, tag: str) -> dict[str, float]:
    """Medians (ms) of one client's answers: the forward, the rest of the app's answer, and
    HTTP in front of the app (the client's wall time less the app's total), and the wall."""
    parts: dict[str, list[float]] = {"forward": [], "rest of the app": [], "HTTP": [], "wall": []}
    with httpx.Client(timeout=60) as client:
        jpegs = unique_jpegs(tag=tag)
        for number, jpeg in enumerate(itertools.islice(jpegs, requests + 5)):
            sent = time.perf_counter()
            answer = client.post(f"{url}/v1/classify", files={"file": ("x.jpg", jpeg)})
            wall = 1000 * (time.perf_counter() - sent)
            answer.raise_for_status()
            if number < 5:
                continue  # warm-up
            forward = float(answer.headers["X-Inference-Time"])
            total = float(answer.headers["X-Total-Time"])
            for part, ms in zip(parts, (forward, total - forward, wall - total, wall), strict=True):
                parts[part].append(ms)
    return {part: statistics.median(values) for part, values in parts.items()}


def busiest_threads(pid: int) -> dict[int, tuple[int, int]]:
    """CPU ticks and involuntary context switches so far of each thread of a process and its
    children (the model may run in a model worker process)."""
    threads: dict[int, tuple[int, int]] = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        for tid in (thread.id for thread in process.threads()):
            try:
                with open(f"/proc/{process.pid}/task/{tid}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if ":" in line)
                with open(f"/proc/{process.pid}/task/{tid}/stat") as stat:
                    times = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended
            ticks = int(times[11]) + int(times[12])  # utime + stime
            threads[tid] = (ticks, int(fields["nonvoluntary_ctxt_switches"]))
    return threads


def preempted_per_s(pid: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """`run()`'s figures, with how often a second the two busiest threads of `pid` (the
    forward's threads) were preempted meanwhile: each time, a parallel region of the forward
    waits for the thread to come back."""
    before, started = busiest_threads(pid), time.monotonic()
    figures = run()
    after, elapsed = busiest_threads(pid), time.monotonic() - started
    # A thread started meanwhile counts from zero: the forward's OpenMP threads start with the
    # batch thread's first forward, the first request's.
    spent = sorted(
        (ticks - before.get(tid, (0, 0))[0], preempted - before.get(tid, (0, 0))[1])
        for tid, (ticks, preempted) in after.items()
    )
    switches = [preempted / elapsed for _, preempted in spent[-2:]]
    return figures | {"forward threads preempted /s": statistics.mean(switches or [0.0])}


def medians_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds."""
    return {part: statistics.median(r[part] for r in rounds) for part in rounds[0]}


def latency(args: argparse.Namespace) -> None:
    env = service_env()
    # Both up at once and measured in alternate rounds: this VM drifts 20% within minutes, so
    # one run of each, one after the other, compares two different machines.
    with (
        service_at(None, env) as (native_url, native_pid),
        ray_application(
            env, model_options={"ray_actor_options": {"num_cpus": 1}}, direct_ingress=args.direct
        ) as ray_url,
    ):
        assert native_pid is not None
        (model,) = [p.pid for p in psutil.process_iter() if process_group(p) == "replica Model"]
        setups = {"native": (native_url, native_pid), "ray": (ray_url, model)}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
        for number in range(args.rounds):
            for name, (url, pid) in setups.items():
                tag = f"{name}-{number}"  # unique JPEGs each round: no cache hits
                run = functools.partial(one_client, url, args.requests, tag)
                figures = preempted_per_s(pid, run)
                rounds[name].append(figures)
                print(f"round {number + 1} {name}: wall {figures['wall']:.1f} ms", flush=True)
    native, on_ray = (medians_of(rounds[name]) for name in setups)
    print(f"| one client, medians of {args.rounds} rounds | resnet-serve serve | Ray | added |")
    print("|---|---|---|---|")
    for part in native:
        added = on_ray[part] - native[part]
        print(f"| {part} | {native[part]:.1f} | {on_ray[part]:.1f} | {added:+.1f} |")


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """These processes stopped (SIGSTOP) meanwhile, then let go on."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def background(args: argparse.Namespace) -> None:
    env = service_env()
    # `resnet-serve serve` alone against the same beside an idle Ray application: rounds
    # alternate with Ray's processes running and frozen, so the one service is measured on
    # one machine with and without what Ray does when it serves nothing.
    with (
        service_at(None, env) as (url, pid),
        ray_application(env, model_options={"ray_actor_options": {"num_cpus": 1}}),
    ):
        assert pid is not None
        ray_pids = [p.pid for p in psutil.process_iter() if process_group(p) not in _NOT_RAY]
        rounds: dict[str, list[dict[str, float]]] = {"Ray running": [], "Ray frozen": []}
        for number in range(args.rounds):
            time.sleep(15)  # Ray catches up on its timers after a freeze: not measured
            for state, figures in rounds.items():
                run = functools.partial(one_client, url, args.requests, f"{state}-{number}")
                with frozen(ray_pids) if state == "Ray frozen" else contextlib.nullcontext():
                    figures.append(preempted_per_s(pid, run))
                print(f"round {number + 1}, {state}: wall {figures[-1]['wall']:.1f} ms", flush=True)
    running, alone = (medians_of(figures) for figures in rounds.values())
    print(
        f"| resnet-serve serve, one client, medians of {args.rounds} rounds | Ray frozen "
        "| Ray running idle beside it | added |"
    )
    print("|---|---|---|---|")
    for part in alone:
        print(
            f"| {part} | {alone[part]:.1f} | {running[part]:.1f} | "
            f"{running[part] - alone[part]:+.1f} |"
        )


def floor(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Echo:
        async def call(self, payload: np.ndarray) -> np.ndarray:
            return np.zeros(3072, np.float32)  # about one image's answer

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Caller:
        def __init__(self, echo: Any) -> None:
            self._echo = echo

        async def round_trip_ms(self, calls: int, payload_bytes: int, by_value: bool) -> float:
            payload = np.zeros(payload_bytes, np.uint8)
            echo = self._echo.options(_by_reference=not by_value)
            times = []
            for _ in range(calls + 5):
                sent = time.perf_counter()
                await echo.call.remote(payload)
                times.append(1000 * (time.perf_counter() - sent))
            return statistics.median(times[5:])  # the first calls connect

    ray.init(num_cpus=psutil.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        handle = serve.run(Caller.bind(Echo.bind()), name="floor", route_prefix=None)  # type: ignore[attr-defined]

        async def measure() -> None:
            image = 224 * 224 * 3
            sizes = [("1 kB", 1000)] + [(f"{n} images", n * image) for n in (1, 2, 4, 8)]
            for name, size in sizes:
                for way, by_value in (("actor call", False), ("gRPC", True)):
                    ms = await handle.round_trip_ms.remote(args.requests, size, by_value)
                    print(f"one Serve handle call, {name}, {way}: median {ms:.2f} ms", flush=True)

        asyncio.run(measure())
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "what",
        choices=["compare", "scale", "batching", "hops", "latency", "background", "floor"],
    )
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="scale: rounds of 1 and 2; latency")
    parser.add_argument("--clients-list", default="1,16,64", help="hops: the loads")
    parser.add_argument(
        "--direct",
        action="store_true",
        help="compare, hops, latency: Ray Serve's direct ingress",
    )
    parser.add_argument("--requests", type=int, default=30, help="latency, floor: how many")
    args = parser.parse_args()
    if args.clients is None:
        args.clients = 16 if args.what == "scale" else 32
    modes = {"compare": compare, "scale": scale, "batching": batching, "hops": hops}
    modes |= {"latency": latency, "background": background, "floor": floor}
    modes[args.what](args)


if __name__ == "__main__":
    main()

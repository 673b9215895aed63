"""The whole GPU acceptance in one command: every figure beside its target, then pass or fail.

    python -m loadtest.gpu_check                     # on a GPU machine: about 5-8 minutes
    python -m loadtest.gpu_check --out $OUT          # the table as JSON and the logs there
    python -m loadtest.gpu_check --rehearse-on-cpu   # the same steps, small and short, on a CPU

Steps (each timed; one that fails is reported and the others still run):
1. raw model: eager fp16 and torch.compile fp16 at batch 1, 64 and 256 (no HTTP, no batcher);
2. JPEG decode: the host (Pillow on every core) against the device (nvJPEG through
   TorchCodec), and their parity on the test photos (pixels and embedding cosine);
3. the service as shipped (`auto` backend, HTTP workers, random ResNet50 weights): what it
   chose and why, its warnings, p50 at one client, throughput at 256 clients over several
   load processes with GPU utilisation (unique 500-px JPEGs), explanations on the device,
   and any fallback it took;
4. the front end: cache hits per second with 1 and with 8 HTTP workers;
5. on Ray (where Ray is installed): the Ray Serve application (Ingress replicas as many as
   the service's HTTP workers, one Model replica on the GPU) at one client and at 256, its
   images/s against the service's from step 3, and the CPU each Ray process spent an image.
Then one table with each figure beside its target (README, "On a GPU") and a pass/fail
line; the same in `OUT/gpu_check.json`, rewritten after every step so a run cut short still
leaves what it measured. Needs only torch, torchvision, timm, pillow, numpy and the
project's core packages: OpenVINO, Gradio and grad-cam are not used, and what needs them is
skipped with a note. Exit status: 0 all targets met, 1 a target missed or a step failed,
2 no GPU here (at once).
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

from loadtest.bench.gpu_utilisation import GpuUtilisation
from loadtest.common.images import base_jpegs, unique_jpegs
from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, readiness, start_service, stop
from loadtest.common.scrape import scrape

if TYPE_CHECKING:
    from service.settings import Settings

# The README's GPU targets.
MIN_IMAGES_PER_S = 4_000
MAX_P50_MS = 10.0
MIN_FRONTEND_SCALING = 5.0
MIN_DECODE_COSINE = 0.99
MIN_RAY_SHARE = 0.8  # the Ray application's images/s against the service's, at 256 clients
MAX_WALL_S = 480


@dataclass(frozen=True)
class Plan:
    """How big each step is: the real check on a GPU, or a rehearsal of it on a CPU."""

    device: str
    model: str
    weights: str
    precision: str
    raw_batches: tuple[int, ...]
    compile: bool
    raw_seconds: float  # per raw measurement
    load_seconds: float  # per load measurement
    warmup_s: float  # load before each measurement starts
    clients: int
    load_processes: int
    http_workers: int  # the service under load
    frontend_workers: tuple[int, int]  # cache hits: one worker against many
    frontend_clients: int
    service_env: dict[str, str] = field(default_factory=dict)  # over the shipped defaults
    decode_images: int = 512


GPU = Plan(
    device="cuda",
    model="resnet50.fb_swsl_ig1b_ft_in1k",
    weights="random",  # same compute as the real weights, which an offline box lacks
    precision="fp16",
    raw_batches=(1, 64, 256),
    compile=True,
    raw_seconds=2.0,
    load_seconds=20.0,
    warmup_s=5.0,
    clients=256,
    load_processes=4,
    http_workers=12,
    frontend_workers=(1, 8),
    frontend_clients=256,
)
# Every step's code on a 2-core CPU in about a minute: what the test suite runs, so a GPU
# machine's scarce minutes are never lost to a bug that a CPU could have shown.
REHEARSAL = Plan(
    device="cpu",
    model="tf_efficientnet_lite0",
    weights="lite0-package",
    precision="fp32",
    raw_batches=(1, 4),
    compile=False,
    raw_seconds=0.3,
    load_seconds=1.5,
    warmup_s=0.5,
    clients=8,
    load_processes=2,
    http_workers=2,
    frontend_workers=(1, 2),
    frontend_clients=8,
    service_env={  # pinned: the background search is tested on its own (tests/e2e)
        "RESNET_SERVE_BACKEND": "torch",
        "RESNET_SERVE_PRECISION": "fp32",
        "RESNET_SERVE_MAX_BATCH_SIZE": "4",
        "RESNET_SERVE_JPEG_DECODE": "device",
        "RESNET_SERVE_THREADS": "1",
    },
    decode_images=32,
)


@dataclass
class Row:
    step: str
    what: str
    measured: str
    target: str = ""
    passed: bool | None = None  # None: reported, not judged


@dataclass
class Report:
    """Rows and notes as they come; printed and written to JSON after every step."""

    out: Path
    judged: bool  # False in a rehearsal: the targets are a GPU's
    machine: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loaded_images_per_s: float | None = None  # the service's, under load: what Ray is held to

    def row(
        self, step: str, what: str, measured: str, target: str = "", passed: bool | None = None
    ) -> None:
        self.rows.append(Row(step, what, measured, target, passed if self.judged else None))
        verdict = {True: "pass", False: "FAIL", None: ""}[self.rows[-1].passed]
        print(f"[{step}] {what}: {measured}  {target}  {verdict}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def failed(self, step: str, error: BaseException) -> None:
        self.rows.append(Row(step, "step failed", f"{type(error).__name__}: {error}", "", False))
        print(f"[{step}] FAILED", flush=True)
        traceback.print_exc()

    @property
    def passed(self) -> bool:
        return all(row.passed is not False for row in self.rows)

    def write(self) -> None:
        document = {
            "machine": self.machine,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "passed": self.passed,
        }
        (self.out / "gpu_check.json").write_text(json.dumps(document, indent=2))

    def table(self) -> str:
        lines = ["| step | what | measured | target | |", "|---|---|---|---|---|"]
        for r in self.rows:
            verdict = {True: "pass", False: "**FAIL**", None: ""}[r.passed]
            lines.append(f"| {r.step} | {r.what} | {r.measured} | {r.target} | {verdict} |")
        return "\n".join(lines + [f"- {note}" for note in self.notes])


def machine_facts(plan: Plan) -> dict[str, str]:
    facts = {
        "date": time.strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "plan": "gpu" if plan is GPU else "rehearsal on the CPU",
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = str(torch.version.cuda)
        facts["gpu_memory_gib"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f}"
    for package in ("torchcodec", "openvino", "gradio", "pytorch_grad_cam"):
        facts[package] = "installed" if find_spec(package) else "absent"
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _settings(plan: Plan, data_dir: Path, **overrides: object) -> "Settings":
    from service.settings import Settings

    values: dict[str, object] = {
        "model": plan.model,
        "weights": plan.weights,
        "device": plan.device,
        "data_dir": data_dir,
        "ui": False,
    }
    return Settings(**(values | overrides))  # type: ignore[arg-type]


def raw_model(plan: Plan, report: Report, data_dir: Path) -> None:
    from service.model.runtime import load_parts
    from service.model.selection import Candidate, build, images_per_second

    settings = _settings(plan, data_dir, max_batch_size=max(plan.raw_batches))
    parts = load_parts(settings)
    variants = [Candidate("torch", plan.precision)]
    if plan.compile:
        variants.append(Candidate("torch-compile", plan.precision))
    for candidate in variants:
        started = time.perf_counter()
        backend = build(candidate, parts, settings)
        for size in plan.raw_batches:
            speed = images_per_second(backend, parts.spec, size, seconds=plan.raw_seconds)
            report.row("raw model", f"{candidate}, batch {size}", f"{speed:,.0f} img/s")
        elapsed = time.perf_counter() - started
        report.row("raw model", f"{candidate}, build and first runs", f"{elapsed:.0f} s")
        del backend
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def jpeg_decode(plan: Plan, report: Report, data_dir: Path) -> None:
    from service.model.backend import TorchBackend
    from service.model.jpeg_upload import JpegUpload, inspect_jpeg
    from service.model.runtime import jpeg_decoder_for, load_parts

    settings = _settings(plan, data_dir, jpeg_decode="device")
    parts = load_parts(settings)
    preprocessor = parts.preprocessor
    jpegs = list(itertools.islice(unique_jpegs(tag="gpu-check"), plan.decode_images))
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(preprocessor, jpegs[:threads]))
        started = time.perf_counter()
        list(pool.map(preprocessor, jpegs))
        host = len(jpegs) / (time.perf_counter() - started)
    report.row("decode", f"host: Pillow, {threads} threads, 500-px JPEGs", f"{host:,.0f} img/s")
    decoder = jpeg_decoder_for(settings, parts.device, preprocessor, parts.fallbacks)
    if decoder is None:
        for warning in parts.fallbacks.warnings:
            report.note(warning)
        report.row("decode", "device decoder self-test", "failed (see notes)", "passes", False)
        return
    report.row("decode", "device decoder self-test", "passed", "passes", True)
    uploads = [inspect_jpeg(data, max_pixels=settings.max_image_pixels) for data in jpegs]
    batches = [uploads[i : i + 64] for i in range(0, len(uploads), 64)]
    decoder.decode(batches[0])  # type: ignore[arg-type]  # all baseline JPEGs
    _synchronise()
    started = time.perf_counter()
    for batch in batches:
        decoder.decode(batch)  # type: ignore[arg-type]
    _synchronise()
    device = len(uploads) / (time.perf_counter() - started)
    report.row("decode", f"device: batches of 64, on {parts.device}", f"{device:,.0f} img/s")
    calibration = resources.files("service.model") / "calibration"
    photos = [
        photo.read_bytes()
        for photo in sorted(calibration.iterdir(), key=lambda photo: photo.name)
        if photo.name.endswith(".jpg")
    ]
    qualified = [
        (data, upload)
        for data in photos
        if isinstance(
            upload := inspect_jpeg(data, max_pixels=settings.max_image_pixels), JpegUpload
        )
    ]
    on_device = decoder.decode([upload for _, upload in qualified])
    on_host = [preprocessor(data) for data, _ in qualified]
    reference = TorchBackend(parts.module, parts.spec.data_config, parts.device, "fp32")
    device_pixels = torch.stack([image for image in on_device if isinstance(image, torch.Tensor)])
    host_pixels = np.stack(on_host)
    pixel_difference = float(
        (device_pixels.cpu().float() - torch.from_numpy(host_pixels).float()).abs().mean()
    )
    cosines = np.sum(
        reference.forward(device_pixels).embedding * reference.forward(host_pixels).embedding,
        axis=1,
    )
    report.row(
        "decode",
        f"device vs host on {len(qualified)} test photos",
        f"min embedding cosine {cosines.min():.4f}, mean pixel difference {pixel_difference:.2f}",
        f">= {MIN_DECODE_COSINE}",
        bool(cosines.min() >= MIN_DECODE_COSINE),
    )
    rescued = parts.fallbacks.counts().get("jpeg_host_decode", 0)
    report.row("decode", "images the host had to decode", str(rescued), "0", rescued == 0)


def _synchronise() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _service_env(plan: Plan, data_dir: Path, **overrides: str) -> dict[str, str]:
    return (
        dict(os.environ)
        | {
            "RESNET_SERVE_MODEL": plan.model,
            "RESNET_SERVE_WEIGHTS": plan.weights,
            "RESNET_SERVE_DEVICE": plan.device,
            "RESNET_SERVE_DATA_DIR": str(data_dir),
            "RESNET_SERVE_UI": "false",
        }
        | plan.service_env
        | overrides
    )


def _failures(result: LoadResult) -> int:
    """Answers that are neither a result nor a refusal (a refusal is the service's choice)."""
    return sum(count for status, count in result.statuses.items() if status not in ("200", "429"))


def service(plan: Plan, report: Report, data_dir: Path) -> None:
    env = _service_env(plan, data_dir, RESNET_SERVE_WORKERS=str(plan.http_workers))
    port, url = _url()
    started = time.perf_counter()
    with (report.out / "service.log").open("wb") as log:
        process = start_service(env, port, log=log, log_level="info", ready_timeout_s=420)
    try:
        report.row(
            "service",
            f"ready: {plan.http_workers} HTTP workers, model load, warm-up",
            f"{time.perf_counter() - started:.0f} s",
        )
        ready = _searched(url)
        search = ready["backend_search"]
        report.row(
            "service",
            "until the background backend search is done",
            f"{time.perf_counter() - started:.0f} s after the start",
        )
        if search is not None and not search.startswith("done"):
            report.note(f"still searching, so the figures below are the reference's: {search}")
        report.row(
            "service",
            "backend chosen",
            f"{ready['backend']}, batch {ready['max_batch_size']}, on {ready['device']}",
        )
        report.note(f"backend choice: {ready['backend_choice']}")
        for warning in ready["warnings"]:
            report.note(f"service warning: {warning}")
        idle = measure_load(url, "/v1/classify", 1, plan.load_seconds, plan.warmup_s)
        report.row(
            "service",
            "p50 at 1 client",
            f"{idle.p50_ms:.1f} ms (p99 {idle.p99_ms:.1f})",
            f"<= {MAX_P50_MS:.0f} ms",
            idle.p50_ms <= MAX_P50_MS,
        )
        with GpuUtilisation() as gpu:
            loaded = measure_load(
                url,
                "/v1/classify",
                plan.clients,
                plan.load_seconds,
                plan.warmup_s,
                processes=plan.load_processes,
            )
        report.loaded_images_per_s = loaded.ok_rps
        report.row(
            "service",
            f"{plan.clients} clients, {plan.load_processes} load processes",
            f"{loaded.ok_rps:,.0f} img/s (p50 {loaded.p50_ms:.0f} ms, p99 {loaded.p99_ms:.0f})",
            f">= {MIN_IMAGES_PER_S:,} img/s",
            loaded.ok_rps >= MIN_IMAGES_PER_S,
        )
        report.row(
            "service",
            "failed requests under that load",
            f"{_failures(loaded)} of {sum(loaded.statuses.values())} ({loaded.statuses})",
            "0",
            _failures(loaded) == 0,
        )
        report.row(
            "service",
            "GPU utilisation under that load",
            gpu.summary().removeprefix("GPU utilisation: "),
        )
        explain(report, url)
        fallbacks = {
            dict(labels)["kind"]: value
            for (name, labels), value in scrape(url).items()
            if name == "model_fallbacks_total"
        }
        report.row("service", "fallbacks taken", str(fallbacks or "none"), "none", not fallbacks)
    finally:
        stop(process)


def _searched(url: str, timeout_s: float = 420) -> dict[str, Any]:
    """/readyz once no backend search runs any more: the figures are the final backend's."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        ready = readiness(url)
        search = ready["backend_search"]
        if search is None or search.startswith("done") or time.monotonic() > deadline:
            return ready
        time.sleep(1.0)


def _url() -> tuple[int, str]:
    port = free_port()
    return port, f"http://127.0.0.1:{port}"


def explain(report: Report, url: str) -> None:
    """Explanations on the model's device: feature maps always, Grad-CAM where installed."""
    photo = base_jpegs()[0]
    device = httpx.get(f"{url}/v1/model", timeout=60).json()["device"]
    for kind, path in (
        ("feature maps, C3", "/v1/features?stage=3&format=json"),
        ("Grad-CAM", "/v1/explain?format=json"),
    ):
        times, answer = [], None
        for _ in range(5):
            sent = time.perf_counter()
            answer = httpx.post(f"{url}{path}", files={"file": ("x.jpg", photo)}, timeout=120)
            if answer.status_code != 200:
                break
            times.append(1000 * (time.perf_counter() - sent))
        if answer is not None and answer.status_code == 200:
            report.row("explain", f"{kind} on {device}", f"p50 {statistics.median(times):.0f} ms")
        elif answer is not None and answer.json()["error"]["code"] == "unavailable":
            report.note(f"{kind} skipped: {answer.json()['error']['message']}")
        else:
            status = None if answer is None else answer.status_code
            report.row("explain", kind, f"answered {status}", "200", False)


def front_end(plan: Plan, report: Report, data_dir: Path) -> None:
    """Cache hits per second by HTTP worker count: the model stays out of the way."""
    photo = base_jpegs()[0]
    hits: dict[int, float] = {}
    for workers in plan.frontend_workers:
        env = _service_env(
            plan,
            data_dir,
            RESNET_SERVE_WORKERS=str(workers),
            RESNET_SERVE_BACKEND="torch",
            RESNET_SERVE_PRECISION=plan.precision,
            RESNET_SERVE_MAX_BATCH_SIZE="8",
        )
        port, url = _url()
        process = start_service(env, port, ready_timeout_s=300)
        try:
            readiness(url)
            for _ in range(20 * workers):  # every worker computes and caches the photo once
                httpx.post(f"{url}/v1/classify", files={"file": ("x.jpg", photo)}, timeout=60)
            result = measure_load(
                url,
                "/v1/classify",
                plan.frontend_clients,
                plan.load_seconds,
                plan.warmup_s,
                repeat=True,
                processes=plan.load_processes,
            )
        finally:
            stop(process)
        hits[workers] = result.ok_rps
        report.row(
            "front end",
            f"cache hits, {workers} HTTP worker(s), {plan.frontend_clients} clients",
            f"{result.ok_rps:,.0f} hits/s (p50 {result.p50_ms:.1f} ms)",
        )
    one, many = plan.frontend_workers
    scaling = hits[many] / hits[one] if hits[one] else float("nan")
    report.row(
        "front end",
        f"{many} workers / 1 worker",
        f"{scaling:.1f}x",
        f">= {MIN_FRONTEND_SCALING:.0f}x",
        scaling >= MIN_FRONTEND_SCALING,
    )


def on_ray(plan: Plan, report: Report, data_dir: Path) -> None:
    """The Ray Serve application on this machine's Ray, as step 3 measured the service."""
    try:
        import ray  # noqa: F401  # here, so that its absence is a note, not a failed step

        from loadtest.bench.bench_ray import loaded, per_image_ms, ray_application
    except ImportError as missing:  # Ray, or psutil, which Ray and the benchmark need
        report.note(
            f"Ray step skipped: {missing} (pip install 'resnet-serve[ray]'; Ray's wheel is "
            "76 MiB, more than an offline device run carries beside the core wheels)"
        )
        return

    replica = {"num_cpus": 1, "num_gpus": 1 if plan.device == "cuda" else 0}
    with ray_application(
        _service_env(plan, data_dir),
        model_options={"ray_actor_options": replica},
        ingress_replicas=plan.http_workers,
    ) as url:
        readiness(url)
        idle = measure_load(url, "/v1/classify", 1, plan.load_seconds, plan.warmup_s)
        report.row("ray", "p50 at 1 client", f"{idle.p50_ms:.1f} ms (p99 {idle.p99_ms:.1f})")
        result, cores = loaded(
            url,
            plan.clients,
            plan.load_seconds,
            warmup_s=plan.warmup_s,
            processes=plan.load_processes,
        )
    measured = f"{result.ok_rps:,.0f} img/s (p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f})"
    report.row("ray", f"{plan.clients} clients, {plan.load_processes} load processes", measured)
    native = report.loaded_images_per_s
    if native:
        share = result.ok_rps / native
        report.row(
            "ray",
            f"{plan.clients} clients, against the service's {native:,.0f} img/s",
            f"{share:.2f}x",
            f">= {MIN_RAY_SHARE}x",
            share >= MIN_RAY_SHARE,
        )
    else:
        report.note("Ray against the service: no figure from the service step to compare with")
    spent = per_image_ms(result, cores)
    report.row(
        "ray",
        "CPU ms an image, by process group",
        ", ".join(f"{group} {ms:.2f}" for group, ms in sorted(spent.items())) or "none measured",
    )
    failed = _failures(result)
    answered = f"{failed} of {sum(result.statuses.values())} ({result.statuses})"
    report.row("ray", "failed requests under that load", answered, "0", failed == 0)


Step = Callable[[Plan, Report, Path], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("raw model", raw_model),
    ("decode", jpeg_decode),
    ("service", service),
    ("front end", front_end),
    ("ray", on_ray),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="where the JSON and the service logs go")
    parser.add_argument(
        "--rehearse-on-cpu",
        action="store_true",
        help="run every step small and short on the CPU (targets not judged)",
    )
    parser.add_argument("--steps", nargs="+", choices=[name for name, _ in STEPS])
    args = parser.parse_args()
    plan = REHEARSAL if args.rehearse_on_cpu else GPU
    if plan is GPU and not torch.cuda.is_available():
        print(
            f"no CUDA GPU here (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
            "this check needs one; --rehearse-on-cpu runs its steps on the CPU",
            file=sys.stderr,
        )
        sys.exit(2)
    out = args.out or Path("results") / time.strftime("gpu-check-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, judged=plan is GPU, machine=machine_facts(plan))
    print(json.dumps(report.machine), flush=True)
    started = time.perf_counter()
    data_dir = Path(tempfile.mkdtemp(prefix="resnet-serve-gpu-check-"))  # one model cache
    for name, step in STEPS:
        if args.steps and name not in args.steps:
            continue
        step_started = time.perf_counter()
        try:
            step(plan, report, data_dir)
        except Exception as error:  # one step's failure must not lose the others' figures
            report.failed(name, error)
        report.note(f"step {name}: {time.perf_counter() - step_started:.0f} s")
        report.write()
    elapsed = time.perf_counter() - started
    report.row(
        "total",
        "wall time of the check",
        f"{elapsed:.0f} s",
        f"<= {MAX_WALL_S} s",
        elapsed <= MAX_WALL_S,
    )
    report.write()
    print("\n" + report.table())
    if report.judged:
        print(f"\nGPU CHECK {'PASSED' if report.passed else 'FAILED'}")
    else:
        print("\nREHEARSAL " + ("RAN EVERY STEP" if report.passed else "HAD A FAILING STEP"))
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()

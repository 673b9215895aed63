"""Choose the backend, precision and batch size, on the machine the service runs on.

`auto` tries every candidate the hardware supports, drops those that fail the accuracy gate
against the fp32 torch reference, and keeps the fastest. The decision, with its measurements,
is cached on disk next to the converted models, keyed by the model fingerprint, the
candidate set, the library versions and the CPU, so a restart skips the work.
"""

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from service.images import Preprocessor
from service.model.backend import (
    BucketedBackend,
    InferenceBackend,
    TorchBackend,
    batch_buckets,
)
from service.model.gate import GATE_IMAGES, GateResult, check, outputs
from service.model.openvino_backend import (
    artefact_dir,
    cpu_supports_bf16,
    load_openvino,
    quantization_recipe,
)
from service.model.samples import sample_images
from service.model.spec import ModelSpec
from service.settings import Settings

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300
BATCH_SIZES = {"cpu": (1, 2, 4, 8, 16), "cuda": (1, 8, 16, 32, 64, 128, 256)}
# Candidates are compared at this batch size unless one is configured: on a GPU batch 8
# measures launch overhead and noise, not the model (fp32 once won that way).
COMPARE_AT = {"cpu": 8, "cuda": 64}
_SPEED_SECONDS = 1.5


@dataclass(frozen=True)
class Candidate:
    backend: str  # torch | openvino
    precision: str  # fp32 | bf16 | fp16 | int8

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}"


@dataclass(frozen=True)
class ModelParts:
    """A loaded model and what goes with it; every backend candidate is built from these."""

    device: torch.device
    module: torch.nn.Module
    spec: ModelSpec
    preprocessor: Preprocessor
    real_weights: bool  # False for random weights: top-1 agreement then means nothing


@dataclass
class Choice:
    candidate: Candidate
    batch_size: int
    reason: str
    measurements: list[dict[str, object]] = field(default_factory=list)


def candidates(settings: Settings, device: torch.device) -> list[Candidate]:
    """What `backend` x `precision` allow here; the reference torch/fp32 always comes first."""
    if device.type == "cuda":
        possible = [
            Candidate("torch", "fp32"),
            Candidate("torch", "fp16"),
            Candidate("torch-compile", "fp16"),
        ]
    else:
        possible = [Candidate("torch", "fp32"), Candidate("openvino", "fp32")]
        if cpu_supports_bf16():
            possible += [Candidate("torch", "bf16"), Candidate("openvino", "bf16")]
        possible.append(Candidate("openvino", "int8"))
        if settings.backend == "torch-compile":  # only on request: see Settings.backend
            possible += [Candidate("torch-compile", "fp32"), Candidate("torch-compile", "bf16")]
    chosen = [
        c
        for c in possible
        if settings.backend in ("auto", c.backend) and settings.precision in ("auto", c.precision)
    ]
    if not chosen:
        raise ValueError(
            f"RESNET_SERVE_BACKEND={settings.backend} with RESNET_SERVE_PRECISION="
            f"{settings.precision} is not available on {device.type}; "
            f"available: {', '.join(map(str, possible))}"
        )
    return chosen


def build(candidate: Candidate, parts: ModelParts, settings: Settings) -> InferenceBackend:
    spec = parts.spec
    if candidate.backend == "torch":
        return TorchBackend(parts.module, spec.data_config, parts.device, candidate.precision)
    if candidate.backend == "torch-compile":
        compiled = TorchBackend(
            parts.module, spec.data_config, parts.device, candidate.precision, compile=True
        )
        largest = settings.max_batch_size or max(BATCH_SIZES[parts.device.type])
        return BucketedBackend(compiled, batch_buckets(largest))
    calibration = None
    if candidate.precision == "int8":
        samples = sample_images(CALIBRATION_IMAGES, seed=1)
        calibration = [parts.preprocessor.pixels(image) for image in samples]
    cache_dir = artefact_dir(
        settings.model_cache_dir,
        spec.fingerprint,
        candidate.precision,
        f"samples-{CALIBRATION_IMAGES}-seed-1|{quantization_recipe()}" if calibration else "",
    )
    return load_openvino(
        parts.module,
        spec.data_config,
        candidate.precision,
        threads=settings.threads,
        cache_dir=cache_dir,
        calibration=calibration,
    )


def choose(parts: ModelParts, settings: Settings) -> tuple[Choice, InferenceBackend]:
    """The backend to serve with; measured once per machine and model, then read from disk."""
    spec = parts.spec
    options = candidates(settings, parts.device)
    record = _decision_path(settings, spec, options, parts.device)
    cached = _read_decision(record)
    if cached is not None:
        log.info("backend choice from %s: %s (%s)", record, cached.candidate, cached.reason)
        return cached, build(cached.candidate, parts, settings)
    if len(options) == 1:
        (only,) = options
        backend = build(only, parts, settings)
        batch = settings.max_batch_size or preferred_batch_size(backend, spec, parts.device)
        choice = Choice(only, batch, "pinned by RESNET_SERVE_BACKEND/PRECISION")
        _write_decision(record, choice)
        return choice, backend
    evaluated = evaluate(options, parts, settings)
    measurements = [e.as_dict() for e in evaluated]
    passing = [e for e in evaluated if e.gate.passed]
    if not passing:
        raise RuntimeError(f"no backend passed the accuracy gate: {measurements}")
    best = max(passing, key=lambda e: e.images_per_s)
    batch = settings.max_batch_size or preferred_batch_size(best.backend, spec, parts.device)
    reason = (
        f"fastest of {len(options)} candidates passing the accuracy gate "
        f"({best.images_per_s:.1f} img/s); rejected: "
        + (
            ", ".join(f"{e.candidate} ({e.gate.reason})" for e in evaluated if not e.gate.passed)
            or "none"
        )
    )
    choice = Choice(best.candidate, batch, reason, measurements)
    _write_decision(record, choice)
    return choice, best.backend


@dataclass(frozen=True)
class Evaluation:
    candidate: Candidate
    backend: InferenceBackend
    gate: GateResult
    images_per_s: float
    seconds: float  # to build (convert, quantize) and check

    def as_dict(self) -> dict[str, object]:
        return {
            "candidate": str(self.candidate),
            "img_per_s": round(self.images_per_s, 2),
            "build_and_check_s": round(self.seconds, 1),
            **self.gate.as_dict(),
        }


def evaluate(options: list[Candidate], parts: ModelParts, settings: Settings) -> list[Evaluation]:
    """Gate (against torch fp32 on real sample images) and speed of every candidate."""
    samples = sample_images(GATE_IMAGES, seed=2)
    images = np.stack([parts.preprocessor.pixels(image) for image in samples])
    reference = outputs(
        TorchBackend(parts.module, parts.spec.data_config, parts.device, "fp32"), images
    )
    evaluated = []
    for option in options:
        started = time.perf_counter()
        backend = build(option, parts, settings)
        gate = check(backend, option.precision, images, reference, real_weights=parts.real_weights)
        compare_at = settings.max_batch_size or COMPARE_AT[parts.device.type]
        speed = images_per_second(backend, parts.spec, compare_at)
        evaluated.append(Evaluation(option, backend, gate, speed, time.perf_counter() - started))
        log.info("candidate %s: %.1f img/s, gate %s (%s)", option, speed, gate.passed, gate.reason)
    return evaluated


def images_per_second(
    backend: InferenceBackend, spec: ModelSpec, batch_size: int, seconds: float = _SPEED_SECONDS
) -> float:
    _, height, width = spec.data_config["input_size"]
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), np.uint8)
    backend.forward(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 2 * batch_size:
        backend.forward(batch)
        done += batch_size
    return done / elapsed


def preferred_batch_size(backend: InferenceBackend, spec: ModelSpec, device: torch.device) -> int:
    """The smallest batch within 5% of the best measured throughput: bigger only adds latency."""
    speeds = {size: images_per_second(backend, spec, size) for size in BATCH_SIZES[device.type]}
    best = max(speeds.values())
    chosen = min(size for size, speed in speeds.items() if speed >= 0.95 * best)
    log.info(
        "batch size %d (img/s by batch size: %s)",
        chosen,
        {k: round(v, 1) for k, v in speeds.items()},
    )
    return chosen


def _decision_path(
    settings: Settings, spec: ModelSpec, options: list[Candidate], device: torch.device
) -> Path:
    identity = {
        "fingerprint": spec.fingerprint,
        "candidates": [str(c) for c in options],
        "max_batch_size": settings.max_batch_size,
        "threads": settings.threads,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "versions": [torch.__version__, ov.__version__],
        "int8_recipe": quantization_recipe(),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return settings.model_cache_dir / f"choice-{key}.json"


def _read_decision(path: Path) -> Choice | None:
    try:
        raw = json.loads(path.read_text())
        return Choice(
            Candidate(**raw["candidate"]),
            int(raw["batch_size"]),
            str(raw["reason"]),
            raw["measurements"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_decision(path: Path, choice: Choice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(choice), indent=2))
    temporary.replace(path)

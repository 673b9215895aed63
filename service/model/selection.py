"""Backend candidates: which exist here, how each is built and timed, and the cached decision.

`auto` considers every candidate the hardware and the installed libraries support (the
search itself is service.model.backend_search). The decision, with its measurements, is
cached on disk next to the converted models, keyed by the model fingerprint, the candidate
set, the library versions and the CPU, so a restart skips the work.
"""

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from service import extras
from service.images import Preprocessor
from service.model.backend import (
    BucketedBackend,
    InferenceBackend,
    TorchBackend,
    batch_buckets,
)
from service.model.cpu_features import cpu_identity, cpu_supports_bf16
from service.model.device_memory import is_out_of_memory, release_cached_memory
from service.model.fallbacks import Fallbacks
from service.model.samples import sample_images
from service.model.serving_gaps import ServingGaps
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
    # What the host does differently from its configuration (a dropped candidate, a device
    # that cannot pin memory, ...): every backend built from these parts reports here.
    fallbacks: Fallbacks = field(default_factory=Fallbacks)


@dataclass
class Choice:
    candidate: Candidate
    batch_size: int
    reason: str
    measurements: list[dict[str, object]] = field(default_factory=list)
    # The candidate's measured speed (0: not measured): admission's estimate once it serves.
    images_per_s: float = 0.0


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
    if not extras.installed("openvino"):  # Settings refuses a backend that asks for it
        possible = [c for c in possible if c.backend != "openvino"]
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


def build(
    candidate: Candidate,
    parts: ModelParts,
    settings: Settings,
    *,
    calibration_images: int = CALIBRATION_IMAGES,
    fast: bool = False,
    cache_root: Path | None = None,
) -> InferenceBackend:
    """The candidate's backend. int8 only: `calibration_images` and `fast` (cheap bias
    correction) make the quick quantization that estimates whether the full one can win.
    `cache_root`: where converted models are read from and written to (default: the model
    cache under DATA_DIR; a shipped decision's directory for its winner)."""
    spec = parts.spec
    if candidate.backend == "torch":
        return TorchBackend(
            parts.module,
            spec.data_config,
            parts.device,
            candidate.precision,
            fallbacks=parts.fallbacks,
        )
    if candidate.backend == "torch-compile":
        compiled = TorchBackend(
            parts.module,
            spec.data_config,
            parts.device,
            candidate.precision,
            compile=True,
            fallbacks=parts.fallbacks,
        )
        largest = settings.max_batch_size or max(BATCH_SIZES[parts.device.type])
        return BucketedBackend(compiled, batch_buckets(largest))
    # Imported here: OpenVINO is optional, and slow to import.
    from service.model.openvino_backend import load_openvino

    calibration = None
    if candidate.precision == "int8":
        samples = sample_images(calibration_images, seed=1)
        calibration = [parts.preprocessor.pixels(image) for image in samples]
    return load_openvino(
        parts.module,
        spec.data_config,
        candidate.precision,
        threads=settings.threads,
        cache_dir=converted_model_dir(
            candidate, parts, settings, cache_root, calibration_images=calibration_images, fast=fast
        ),
        calibration=calibration,
        fast=fast,
    )


def converted_model_dir(
    candidate: Candidate,
    parts: ModelParts,
    settings: Settings,
    cache_root: Path | None = None,
    *,
    calibration_images: int = CALIBRATION_IMAGES,
    fast: bool = False,
) -> Path:
    """Where an OpenVINO candidate's converted (and quantized) model is cached."""
    from service.model.openvino_backend import artefact_dir, quantization_recipe

    recipe = f"{quantization_recipe()}{'|fast' if fast else ''}"
    calibration = f"samples-{calibration_images}-seed-1|{recipe}"
    return artefact_dir(
        cache_root or settings.model_cache_dir,
        parts.spec.fingerprint,
        candidate.precision,
        calibration if candidate.precision == "int8" else "",
    )


def images_per_second(
    backend: InferenceBackend,
    spec: ModelSpec,
    batch_size: int,
    seconds: float = _SPEED_SECONDS,
    gaps: ServingGaps | None = None,
) -> float:
    """Images per second of forward time. Beside a serving model (`gaps`), each forward
    waits for a gap in serving first, and one that a serving batch overlapped is not
    counted (see ServingGaps.timed)."""
    _, height, width = spec.data_config["input_size"]
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), np.uint8)
    backend.forward(batch)  # warm-up
    done, busy = 0, 0.0
    while busy < seconds or done < 2 * batch_size:
        if gaps is None:
            started = time.perf_counter()
            backend.forward(batch)
            took: float | None = time.perf_counter() - started
        else:
            took = gaps.timed(lambda: backend.forward(batch))
        if took is not None:
            busy += took
            done += batch_size
    return done / busy


def preferred_batch_size(
    backend: InferenceBackend,
    spec: ModelSpec,
    device: torch.device,
    gaps: ServingGaps | None = None,
) -> int:
    """The smallest batch within 5% of the best measured throughput: bigger only adds latency.

    Sizes from the first that runs out of device memory up are left out (and said so)."""
    speeds: dict[int, float] = {}
    for size in BATCH_SIZES[device.type]:
        try:
            speeds[size] = images_per_second(backend, spec, size, gaps=gaps)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc) or not speeds:
                raise
            release_cached_memory()
            log.warning(
                "batch size %d does not fit in the device's memory: measured up to %d",
                size,
                max(speeds),
            )
            break
    best = max(speeds.values())
    chosen = min(size for size, speed in speeds.items() if speed >= 0.95 * best)
    log.info(
        "batch size %d (img/s by batch size: %s)",
        chosen,
        {k: round(v, 1) for k, v in speeds.items()},
    )
    return chosen


def decision_identity(
    settings: Settings, spec: ModelSpec, options: list[Candidate], device: torch.device
) -> dict[str, object]:
    """What a decision holds for: the model, the candidates, the CPU (model and the features
    the backends use), the device and the library versions. A decision made for anything else
    is decided again, never trusted."""
    return {
        "fingerprint": spec.fingerprint,
        "candidates": [str(c) for c in options],
        "max_batch_size": settings.max_batch_size,
        "threads": settings.threads,
        "device": str(device),
        "cpu": cpu_identity() or platform.machine(),
        "versions": library_versions(),
    }


def decision_path(root: Path, identity: dict[str, object]) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"choice-{key}.json"


def library_versions() -> list[str]:
    """What changes a candidate's results: torch, and OpenVINO with its int8 recipe."""
    if not extras.installed("openvino"):
        return [torch.__version__]
    from service.model.openvino_backend import quantization_recipe

    return [torch.__version__, version("openvino"), quantization_recipe()]


def read_decision(path: Path, identity: dict[str, object]) -> Choice | None:
    """The decision recorded at `path` if it was made for `identity`; else None (logged when
    the file is there but holds for something else)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("backend decision %s unreadable (%s): deciding again", path, exc)
        return None
    if not isinstance(raw, dict) or raw.get("identity") != identity:
        recorded = raw.get("identity") if isinstance(raw, dict) else None
        differs = sorted(
            key
            for key in identity
            if not isinstance(recorded, dict) or recorded.get(key) != identity[key]
        )
        log.warning(
            "backend decision %s was made for another %s: deciding again",
            path,
            ", ".join(differs) or "format",
        )
        return None
    try:
        return Choice(
            Candidate(**raw["candidate"]),
            int(raw["batch_size"]),
            str(raw["reason"]),
            list(raw["measurements"]),
            float(raw.get("images_per_s", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("backend decision %s is malformed (%s): deciding again", path, exc)
        return None


def write_decision(path: Path, choice: Choice, identity: dict[str, object]) -> None:
    """Atomically: replicas sharing a data directory may decide at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(choice) | {"identity": identity}, indent=2))
    temporary.replace(path)

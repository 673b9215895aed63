"""OpenVINO backend: fp32 and bf16 by inference precision hint, int8 by NNCF quantization.

Converted (and quantized) models are cached on disk under a key of the model fingerprint,
the OpenVINO version and the precision, so a restart reads IR files instead of converting.
"""

import hashlib
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from service.model.backend import Pixels, serving_module
from service.model.cpu_features import cpu_has_int8_dot_product
from service.model.model_io import ModelOutputs

log = logging.getLogger(__name__)

_HINTS = {"fp32": "f32", "bf16": "bf16"}  # int8 layers run int8; the rest as OpenVINO decides
_INPUT = "uint8-nhwc"  # what the converted graph takes (normalisation is inside it)


class OpenVinoBackend:
    def __init__(self, compiled: ov.CompiledModel, precision: str) -> None:
        self.name = f"openvino-cpu-{precision}"
        self.precision = precision
        # One request, used only from the batcher's owner thread.
        self._request = compiled.create_infer_request()

    def forward(self, pixels: Pixels) -> ModelOutputs:
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.numpy(force=True)
        results = self._request.infer({0: np.ascontiguousarray(pixels, dtype=np.uint8)})
        probabilities, embeddings = (np.asarray(results[i], dtype=np.float32) for i in range(2))
        # Quantized graphs drift off unit length (cosine 1.01 seen with int8); restore it.
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return ModelOutputs(probabilities, embeddings)


def artefact_dir(cache_root: Path, fingerprint: str, precision: str, calibration: str) -> Path:
    # The input contract is part of the key: IRs of older releases took normalised float32.
    identity = f"{fingerprint}|{ov.__version__}|{precision}|{calibration}|{_INPUT}"
    key = hashlib.sha256(identity.encode())
    return cache_root / f"openvino-{precision}-{key.hexdigest()[:16]}"


def load_openvino(
    module: torch.nn.Module,
    data_config: dict[str, Any],
    precision: str,
    *,
    threads: int,
    cache_dir: Path,
    calibration: list[np.ndarray] | None = None,
    fast: bool = False,
) -> OpenVinoBackend:
    """Compile the model for the CPU, converting/quantizing only when no cached IR exists."""
    xml = cache_dir / "model.xml"
    if not xml.exists():
        started = time.perf_counter()
        model = _convert(module, data_config)
        if precision == "int8":
            if not calibration:
                raise ValueError("int8 needs calibration images")
            model = _quantize(model, calibration, fast)
        _save_atomically(model, cache_dir)
        log.info(
            "built OpenVINO %s model in %.1f s (%s)",
            precision,
            time.perf_counter() - started,
            cache_dir,
        )
    core = ov.Core()
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",  # one batch at a time from one thread: all cores on it
        "INFERENCE_NUM_THREADS": threads,
    }
    if precision in _HINTS:
        config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
    return OpenVinoBackend(core.compile_model(core.read_model(xml), "CPU", config), precision)


def _convert(module: torch.nn.Module, data_config: dict[str, Any]) -> ov.Model:
    _, height, width = data_config["input_size"]
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    # convert_model traces with torch.jit, which torch now flags as deprecated on every call;
    # the warning is about OpenVINO's internals, not ours.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        return ov.convert_model(
            serving_module(module, data_config),
            example_input=example,
            input=[((-1, height, width, 3), ov.Type.u8)],
        )


def quantization_recipe() -> str:
    """What `_quantize` does on this CPU, for the cache key of its artefacts."""
    overflow = "first-layer" if cpu_has_int8_dot_product() else "all-layers"
    return f"stem-fp32|full-bias-correction|overflow-fix-{overflow}"


def _quantize(model: ov.Model, calibration: list[np.ndarray], fast: bool = False) -> ov.Model:
    import nncf  # imported here: slow, and only int8 needs it
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    weighted = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
    ]
    overflow = OverflowFix.FIRST_LAYER if cpu_has_int8_dot_product() else OverflowFix.ENABLE
    # Measured on EfficientNet-Lite0 (real weights, 200 gate images, AVX2 CPU), against the
    # NNCF defaults (top-1 agreement 0.80, median embedding cosine 0.947): the stem conv in
    # fp32, 7-bit weights everywhere and full bias correction give 0.87 and 0.992, for about
    # 4% of int8 speed on ResNet50.
    return nncf.quantize(
        model,
        nncf.Dataset(calibration, lambda image: image[None]),
        subset_size=len(calibration),
        fast_bias_correction=fast,
        ignored_scope=nncf.IgnoredScope(names=weighted[:1]),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow),
    )


def _save_atomically(model: ov.Model, target: Path) -> None:
    """Written beside `target` and renamed onto it: a process killed while writing leaves a
    staging folder that nothing reads. Replicas that share the data directory may build the
    same model at once; the first rename wins and the others keep its files."""
    staging = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ov.save_model(model, staging / "model.xml", compress_to_fp16=False)
    try:
        staging.rename(target)
    except OSError:  # another replica's files are there already (or a stale folder)
        if not (target / "model.xml").exists():
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            return
        shutil.rmtree(staging, ignore_errors=True)

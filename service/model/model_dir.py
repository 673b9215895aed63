"""A fine-tuned model on disk: MODEL_DIR/ with weights, labels and how it was made.

    model.safetensors  the whole model's state dict (base network and new head)
    labels.json        the class names, in output order
    config.json        base model id, data config, classes, mode, head, base fingerprint,
                       the command and package versions
    metrics.json       validation results and the per-epoch history
    confusion.png      the validation confusion matrix

`RESNET_SERVE_WEIGHTS=MODEL_DIR` serves it. Loading is strict: a missing file, a config of
another format, labels that do not match the head, or weights that do not fit the base model
each fail with a message that says which file and what to do.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
import torch.nn.functional as F

from service.model.dir_files import (
    CONFIG,
    CONFUSION,
    FORMAT,
    LABELS,
    METRICS,
    WEIGHTS,
    DirConfig,
    Head,
    ModelDirError,
    read_config,
    read_labels,
)

__all__ = ["CONFIG", "CONFUSION", "LABELS", "METRICS", "WEIGHTS", "DirConfig", "ModelDirError"]


class L2Normalize(torch.nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1)


def replace_head(module: torch.nn.Module, num_classes: int, head: Head) -> None:
    """Give a timm model a new classifier for `num_classes` classes."""
    timm_model: Any = module
    timm_model.reset_classifier(num_classes)
    if head == "normalized-linear":
        path = timm_model.pretrained_cfg["classifier"]  # e.g. "fc", "classifier", "head.fc"
        parent_path, _, name = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        setattr(parent, name, torch.nn.Sequential(L2Normalize(), getattr(parent, name)))


@dataclass(frozen=True)
class LoadedDir:
    module: torch.nn.Module
    base_model: str
    labels: tuple[str, ...]
    weights: Path


def save(
    out: Path,
    module: torch.nn.Module,
    labels: list[str],
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """Write the directory; the weights last-but-one and the config last, so a directory with a
    config is complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / LABELS).write_text(json.dumps(labels, indent=2))
    (out / METRICS).write_text(json.dumps(metrics, indent=2))
    state = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    safetensors.torch.save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({"format": FORMAT, **config}, indent=2))


def load(path: Path) -> LoadedDir:
    config = read_config(path)
    labels = read_labels(path)
    if labels != config.classes:
        raise ModelDirError(f"{path / LABELS} does not match the classes in {path / CONFIG}")
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing: the directory is incomplete; fine-tune again")
    base = config.base_model
    try:
        module = timm.create_model(base, pretrained=False)
    except RuntimeError as exc:
        raise ModelDirError(f"{path / CONFIG} names base model {base!r}: {exc}") from exc
    replace_head(module, len(labels), config.head)
    try:
        module.load_state_dict(safetensors.torch.load_file(str(weights)), strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelDirError(
            f"{weights} does not fit {base} with a {len(labels)}-class {config.head} head "
            f"(was the directory edited by hand?): {exc}"
        ) from exc
    return LoadedDir(module.eval(), base, tuple(labels), weights)

"""The files of a fine-tuned model directory (service.model.model_dir), read without torch:
its config and labels, checked strictly, and the error that says which file is wrong. The
HTTP processes read heads with this (service.heads), and never load torch.
"""

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from service.on_disk import wrong_fields

FORMAT = 1
CONFIG, WEIGHTS, LABELS, METRICS, CONFUSION = (
    "config.json",
    "model.safetensors",
    "labels.json",
    "metrics.json",
    "confusion.png",
)
# head mode trains on the serving embeddings, which are L2-normalised pooled features; the
# served model normalises before its new linear layer the same way.
Head = Literal["linear", "normalized-linear"]


class ModelDirError(ValueError):
    """A model directory that cannot be served as it is; the message says why and what to do."""


class DirConfig(BaseModel):
    """config.json as `resnet-serve finetune` writes it; read strictly, so a missing,
    mistyped or unknown field is named rather than failing later."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    base_model: str
    base_weights: str
    data_config: dict[str, Any]
    classes: list[str] = Field(min_length=1)
    mode: Literal["head", "full"]
    head: Head
    train_stages: int | None
    base_fingerprint: str
    command: list[str]
    versions: dict[str, str]


_Labels = TypeAdapter(list[str])


def read_config(path: Path) -> DirConfig:
    raw = _json(path, CONFIG, "run `resnet-serve finetune DATA_DIR --out MODEL_DIR` to make one")
    if isinstance(raw, dict) and raw.get("format") != FORMAT:
        raise ModelDirError(
            f"{path / CONFIG} is format {raw.get('format')!r}; this service reads format "
            f"{FORMAT}: fine-tune again with this version"
        )
    try:
        return DirConfig.model_validate(raw)
    except ValidationError as exc:
        raise ModelDirError(
            f"{path / CONFIG} is not what `resnet-serve finetune` writes ({wrong_fields(exc)}): "
            "fine-tune again"
        ) from None


def read_labels(path: Path) -> list[str]:
    raw = _json(path, LABELS, "it lists the class names; fine-tune again to write it")
    try:
        labels = _Labels.validate_python(raw, strict=True)
    except ValidationError:
        raise ModelDirError(f"{path / LABELS} must be a non-empty list of class names") from None
    if not labels:
        raise ModelDirError(f"{path / LABELS} must be a non-empty list of class names")
    return labels


def _json(path: Path, name: str, remedy: str) -> Any:
    file = path / name
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise ModelDirError(f"{file} is missing: {remedy}") from None
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{file} is unreadable ({exc}): {remedy}") from exc

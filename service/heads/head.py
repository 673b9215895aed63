"""One task head: what `resnet-serve finetune --mode head` trained, read from its model
directory without torch (the HTTP processes apply heads, and never load torch).

Head mode trains a linear layer on the L2-normalised pooled features, which are exactly the
serving embedding (service.model.model_io.ModelOutputs.embedding): so a head is one C x D
matrix and a bias applied to the embedding the live model computed anyway.
"""

import functools
import json
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from threadpoolctl import ThreadpoolController

from service.model.dir_files import METRICS, WEIGHTS, ModelDirError, read_config, read_labels


class NotAHead(ModelDirError):
    """A model directory that is not a head on the serving embedding."""


class FullFineTune(NotAHead):
    """A directory whose backbone was fine-tuned too: a model version, not a head."""


@dataclass(frozen=True)
class Head:
    name: str
    source: str
    classes: tuple[str, ...]
    weight: np.ndarray  # (classes, embedding_dim) float32
    bias: np.ndarray  # (classes,) float32
    base_model: str
    base_fingerprint: str
    validation_top1: float | None

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Softmax of the head's logits for (n, d) embeddings (or one (d,) embedding)."""
        with one_blas_thread():
            logits = embeddings @ self.weight.T + self.bias
        logits = logits - logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=-1, keepdims=True), np.float32)


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[object]:
    """numpy's BLAS on this thread alone while a head runs: OpenBLAS's own threads would
    wait for cores the model's threads hold (spinning after each batch), and a head of 1,000
    classes took 100 ms instead of 1 (issue 39's benchmark)."""
    limited: AbstractContextManager[object] = _blas().limit(limits=1, user_api="blas")
    return limited


def load_head(name: str, source: Path, embedding_dim: int) -> Head:
    """The head in `source`; ModelDirError (naming the file) when it cannot be one."""
    if not source.is_dir():
        raise ModelDirError(f"{source} is not a directory: give the MODEL_DIR finetune wrote")
    config = read_config(source)
    labels = read_labels(source)
    if labels != config.classes:
        raise ModelDirError(f"{source / 'labels.json'} does not match the classes in config.json")
    if config.mode == "full":
        raise FullFineTune(
            f"{source} is a full fine-tune (its backbone changed): add it as a model version "
            "(POST /v1/models), not as a head"
        )
    if config.head != "normalized-linear":
        raise NotAHead(f"{source / 'config.json'}: a {config.head!r} head is not on the embedding")
    weight, bias = _linear_layer(source / WEIGHTS, len(labels), embedding_dim)
    return Head(
        name,
        str(source),
        tuple(labels),
        weight,
        bias,
        config.base_model,
        config.base_fingerprint,
        _top1(source / METRICS),
    )


def _linear_layer(path: Path, classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's (classes, dim) weight and its bias: the one such pair in the file (read
    alone: the backbone's tensors stay on disk)."""
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: the directory is incomplete; fine-tune again")
    try:
        with safe_open(str(path), framework="numpy") as tensors:
            shapes = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}  # noqa: SIM118
            found = [
                key
                for key, shape in shapes.items()
                if key.endswith(".weight")
                and shape == (classes, dim)
                and shapes.get(key.removesuffix(".weight") + ".bias") == (classes,)
            ]
            if len(found) != 1:
                raise NotAHead(
                    f"{path} holds {len(found)} linear layers of {classes} x {dim} (the "
                    "embedding's size): not a head for this model"
                )
            weight = np.asarray(tensors.get_tensor(found[0]), np.float32)
            bias = np.asarray(tensors.get_tensor(found[0].removesuffix(".weight") + ".bias"))
    except NotAHead:
        raise
    except Exception as exc:  # safetensors' own errors: a corrupt or truncated file
        raise ModelDirError(f"{path} is unreadable ({exc}): fine-tune again") from exc
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ModelDirError(f"{path}: the head's weights are not finite numbers")
    return weight, bias.astype(np.float32)


def _top1(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text()).get("val_top1")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

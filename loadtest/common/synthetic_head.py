"""A task head directory as `resnet-serve finetune --mode head` writes one, with a random
linear layer instead of a trained one: for tests and the heads benchmark, which need heads of
any size for the live model's base without training them."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_head(out: Path, *, classes: int, dim: int, base_fingerprint: str, seed: int = 0) -> Path:
    """A head of `classes` classes on `dim`-d embeddings of the model with that fingerprint."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = [f"class-{i}" for i in range(classes)]
    weights = {
        "classifier.1.weight": rng.normal(0, 1, (classes, dim)).astype(np.float32),
        "classifier.1.bias": rng.normal(0, 0.1, classes).astype(np.float32),
    }
    save_file(weights, str(out / "model.safetensors"))
    (out / "labels.json").write_text(json.dumps(labels))
    (out / "metrics.json").write_text(json.dumps({"val_top1": 0.5}))
    config = {
        "format": 1,
        "base_model": "synthetic",
        "base_weights": "synthetic",
        "data_config": {},
        "classes": labels,
        "mode": "head",
        "head": "normalized-linear",
        "train_stages": None,
        "base_fingerprint": base_fingerprint,
        "command": ["synthetic"],
        "versions": {},
    }
    (out / "config.json").write_text(json.dumps(config))
    return out

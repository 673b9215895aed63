"""`resnet-serve finetune DATA_DIR --out MODEL_DIR`: train on a folder of photos."""

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service import extras
from service.finetune.data import DataError, Dataset, load_folder
from service.finetune.embeddings import EmbeddingCache, embed_files
from service.finetune.train import History, train_full, train_head
from service.model import model_dir
from service.model.cpu_features import cpu_supports_bf16
from service.model.load_error import ModelLoadError
from service.model.runtime import load_parts, load_runtime
from service.model.spec import ModelSpec
from service.settings import Settings


def run_finetune(args: argparse.Namespace, settings: Settings, command: list[str]) -> int:
    """Train and write MODEL_DIR; `command` (the command line) is recorded in its config."""
    try:
        data = load_folder(args.data, args.val_fraction, args.seed)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(data.summary(), flush=True)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    try:
        if args.mode == "head":
            module, spec, history, predictions = _head(args, settings, data)
        else:
            module, spec, history, predictions = _full(args, settings, data)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted before the first epoch ended: nothing written", file=sys.stderr)
        return 130
    labels = [example.label for example in data.val]
    _write(args, command, data, module, spec, history, labels, predictions, started)
    print(f"wrote {args.out} (serve it: RESNET_SERVE_WEIGHTS={args.out} resnet-serve serve)")
    return 130 if history.interrupted else 0


def _head(
    args: argparse.Namespace, settings: Settings, data: Dataset
) -> tuple[torch.nn.Module, ModelSpec, History, list[int]]:
    runtime = load_runtime(settings)
    spec = runtime.spec
    cache = EmbeddingCache(
        settings.data_dir / "finetune" / "embeddings.sqlite3",
        f"{spec.fingerprint}-{runtime.backend.name}",  # int8 and fp32 embeddings differ a little
        spec.embedding_dim,
    )
    try:
        parts = {}
        for name, examples in (("train", data.train), ("val", data.val)):
            paths = [example.path for example in examples]
            vectors, kept, failed = embed_files(runtime, paths, cache, not args.no_progress)
            data.skipped += failed
            parts[name] = (vectors, np.array([examples[i].label for i in kept], np.int64))
            if name == "val":
                data.val = [examples[i] for i in kept]
    finally:
        cache.close()
    head, history = train_head(
        parts["train"],
        parts["val"],
        len(data.classes),
        epochs=args.epochs or 300,
        lr=args.lr or 0.05,
        label_smoothing=args.label_smoothing,
        patience=args.patience or 20,
        log=print,
    )
    with torch.no_grad():
        predictions = head(torch.from_numpy(parts["val"][0])).argmax(1).tolist()
    module = runtime.module.cpu().float()
    model_dir.replace_head(module, len(data.classes), "normalized-linear")
    module.get_classifier()[1].load_state_dict(head.state_dict())  # type: ignore[operator]
    return module, spec, history, predictions


def _full(
    args: argparse.Namespace, settings: Settings, data: Dataset
) -> tuple[torch.nn.Module, ModelSpec, History, list[int]]:
    parts = load_parts(settings)
    module = parts.module.float()
    model_dir.replace_head(module, len(data.classes), "linear")
    if parts.device.type == "cuda":
        dtype: torch.dtype | None = torch.float16
    else:
        dtype = torch.bfloat16 if cpu_supports_bf16() else None
    print(f"training on {parts.device}, {dtype or 'fp32'} autocast", flush=True)
    history = train_full(
        module,
        data.train,
        data.val,
        parts.spec.data_config,
        parts.device,
        epochs=args.epochs or 10,
        train_stages=args.train_stages,
        batch_size=args.batch_size,
        lr=args.lr or 1e-3,
        label_smoothing=args.label_smoothing,
        patience=args.patience or 3,
        autocast_dtype=dtype,
        hflip=args.hflip,
        progress=not args.no_progress,
        log=lambda line: print(line, flush=True),
    )
    predictions = _predict(module, data, parts.spec.data_config, parts.device)
    return module.cpu(), parts.spec, history, predictions


@torch.no_grad()
def _predict(
    module: torch.nn.Module, data: Dataset, data_config: dict[str, Any], device: torch.device
) -> list[int]:
    from PIL import Image
    from timm.data.transforms_factory import create_transform

    transform = create_transform(**data_config, is_training=False)
    predictions = []
    for example in data.val:
        with Image.open(example.path) as image:
            batch = transform(image.convert("RGB"))[None].to(device)
        predictions.append(int(module(batch).argmax(1)))
    return predictions


def _write(
    args: argparse.Namespace,
    command: list[str],
    data: Dataset,
    module: torch.nn.Module,
    spec: ModelSpec,
    history: History,
    labels: list[int],
    predictions: list[int],
    started: float,
) -> None:
    config = {
        "base_model": spec.model_id,
        "base_weights": spec.weights,
        "data_config": spec.data_config,
        "classes": data.classes,
        "mode": args.mode,
        "head": "normalized-linear" if args.mode == "head" else "linear",
        "train_stages": args.train_stages,
        "base_fingerprint": spec.fingerprint,
        "command": command,
        "versions": {p: version(p) for p in ("resnet-serve", "torch", "timm")},
    }
    matrix = np.zeros((len(data.classes), len(data.classes)), np.int64)
    for truth, guess in zip(labels, predictions, strict=True):
        matrix[truth, guess] += 1
    metrics = {
        "val_top1": round(float(np.trace(matrix) / max(1, matrix.sum())), 5),
        "best_epoch": history.best_epoch,
        "interrupted": history.interrupted,
        "seconds": round(time.perf_counter() - started, 1),
        "train_images": len(data.train),
        "val_images": len(data.val),
        "skipped": [[str(path), why] for path, why in data.skipped],
        "confusion": matrix.tolist(),
        "history": history.epochs,
    }
    model_dir.save(args.out, module, data.classes, config, metrics)
    if extras.installed("finetune"):
        _confusion_png(matrix, data.classes, args.out / model_dir.CONFUSION)
    else:  # the matrix is in metrics.json; only its picture needs matplotlib
        print(extras.missing("finetune", f"the picture {model_dir.CONFUSION}"), file=sys.stderr)


def _confusion_png(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to a file
    from matplotlib import pyplot as plt

    size = max(4.0, 0.5 * len(classes))
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=90)
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)

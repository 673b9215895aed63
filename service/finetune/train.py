"""Training: a new head on frozen embeddings, or the network itself (all or its last stages).

Both report a line per epoch (train loss, val loss, val top-1, time), stop early when the
validation loss stops improving, and keep the best state; Ctrl-C ends training and keeps the
best state so far.
"""

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.transforms_factory import create_transform
from tqdm import tqdm

from service.explain.explainer import resolve_stages
from service.finetune.data import Example

Log = Callable[[str], None]


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    interrupted: bool = False

    @property
    def best(self) -> dict[str, float]:
        return self.epochs[self.best_epoch - 1]


@dataclass
class _Best:
    loss: float = math.inf
    state: dict[str, torch.Tensor] | None = None
    stale: int = 0


def train_head(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    classes: int,
    *,
    epochs: int,
    lr: float,
    label_smoothing: float,
    patience: int,
    log: Log,
) -> tuple[torch.nn.Linear, History]:
    """A linear layer on L2-normalised embeddings, full batch (they fit in memory)."""
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1]).long()
    vx, vy = torch.from_numpy(val[0]), torch.from_numpy(val[1]).long()
    head = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    history, best = History(), _Best()
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            optimizer.zero_grad()
            loss = F.cross_entropy(head(x), y, label_smoothing=label_smoothing)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            with torch.no_grad():
                logits = head(vx)
                val_loss = float(F.cross_entropy(logits, vy))
                top1 = float((logits.argmax(1) == vy).float().mean())
            row = _row(epoch, float(loss.detach()), val_loss, top1, time.perf_counter() - started)
            # Hundreds of cheap full-batch epochs: a line for every tenth.
            if _improve(history, best, head, row, log if epoch % 10 == 0 else _silent, patience):
                break
    except KeyboardInterrupt:
        history.interrupted = True
    if best.state is None:
        raise KeyboardInterrupt  # interrupted before one epoch: nothing worth keeping
    head.load_state_dict(best.state)
    log(f"best epoch {history.best_epoch}: val top-1 {history.best['val_top1']:.4f}")
    return head, history


def _silent(_: str) -> None:
    pass


def _improve(
    history: History,
    best: _Best,
    module: torch.nn.Module,
    row: dict[str, float],
    log: Log,
    patience: int,
) -> bool:
    """Record an epoch; True when the validation loss has not improved for `patience` epochs.

    The best state is kept before the epoch's line is printed: whoever presses Ctrl-C after
    seeing the line gets that epoch.
    """
    improved = row["val_loss"] < best.loss - 1e-4
    if improved:
        best.loss, best.stale = row["val_loss"], 0
        best.state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    else:
        best.stale += 1
    history.epochs.append(row)
    if improved:
        history.best_epoch = len(history.epochs)
    log(
        f"epoch {int(row['epoch']):3d}  train loss {row['train_loss']:.4f}  "
        f"val loss {row['val_loss']:.4f}  val top-1 {row['val_top1']:.4f}  {row['seconds']:.1f} s"
    )
    return best.stale >= patience


def _row(
    epoch: int, train_loss: float, val_loss: float, top1: float, seconds: float
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": round(train_loss, 5),
        "val_loss": round(val_loss, 5),
        "val_top1": round(top1, 5),
        "seconds": round(seconds, 2),
    }


class _Images(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, examples: list[Example], transform: Any) -> None:
        self._examples = examples
        self._transform = transform

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self._examples[index]
        with Image.open(example.path) as image:
            tensor: torch.Tensor = self._transform(image.convert("RGB"))
        return tensor, example.label


def trainable_from_stage(module: torch.nn.Module, stages: int | None) -> list[torch.nn.Parameter]:
    """All parameters, or those of the last `stages` stages and everything after them (the
    head); the rest are frozen."""
    parameters = list(module.named_parameters())
    if stages is None:
        return [p for _, p in parameters]
    known = resolve_stages(module)
    if not 1 <= stages <= len(known):
        raise ValueError(f"--train-stages must be 1..{len(known)} for this model")
    first = known[-stages].module + "."
    start = next(i for i, (name, _) in enumerate(parameters) if name.startswith(first))
    for _, parameter in parameters[:start]:
        parameter.requires_grad_(False)
    return [p for _, p in parameters[start:]]


def train_full(
    module: torch.nn.Module,
    train: list[Example],
    val: list[Example],
    data_config: dict[str, Any],
    device: torch.device,
    *,
    epochs: int,
    train_stages: int | None,
    batch_size: int,
    lr: float,
    label_smoothing: float,
    patience: int,
    autocast_dtype: torch.dtype | None,
    hflip: float,
    progress: bool,
    log: Log,
) -> History:
    """Fine-tune in place; the module ends with its best state (lowest validation loss)."""
    module.to(device)
    trainable = trainable_from_stage(module, train_stages)
    loaders = {
        "train": torch.utils.data.DataLoader(
            # timm's training augmentation, with crops of at least a third of the image: its
            # default (8%) cuts most of the subject out of small photos and scans.
            _Images(
                train,
                create_transform(**data_config, is_training=True, scale=(0.35, 1.0), hflip=hflip),
            ),
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(train) > batch_size,
        ),
        "val": torch.utils.data.DataLoader(
            _Images(val, create_transform(**data_config, is_training=False)),
            batch_size=batch_size,
        ),
    }
    steps = epochs * len(loaders["train"])
    warmup = max(1, len(loaders["train"]))  # one epoch of linear warm-up, then cosine decay
    # The new head starts from random weights: it learns 10x faster than the pretrained body.
    timm_module: Any = module
    head = {id(p) for p in timm_module.get_classifier().parameters()}
    groups = [
        {"params": [p for p in trainable if id(p) not in head], "lr": lr},
        {"params": [p for p in trainable if id(p) in head], "lr": 10 * lr},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        ),
    )
    # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    history, best = History(), _Best()
    try:
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            module.train()
            losses = []
            for images, labels in _bar(loaders["train"], f"epoch {epoch}", progress):
                with _autocast(device, autocast_dtype):
                    loss = F.cross_entropy(
                        module(images.to(device)),
                        labels.to(device),
                        label_smoothing=label_smoothing,
                    )
                optimizer.zero_grad()
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                losses.append(float(loss.detach()))
            val_loss, top1 = evaluate(module, loaders["val"], device, autocast_dtype)
            row = _row(epoch, float(np.mean(losses)), val_loss, top1, time.perf_counter() - started)
            if _improve(history, best, module, row, log, patience):
                log(f"validation loss did not improve for {patience} epochs: stopping")
                break
    except KeyboardInterrupt:
        history.interrupted = True
        log("interrupted: keeping the best epoch so far")
    if best.state is None:
        raise KeyboardInterrupt  # interrupted before one epoch: nothing worth keeping
    module.load_state_dict(best.state)
    module.eval()
    log(f"best epoch {history.best_epoch}: val top-1 {history.best['val_top1']:.4f}")
    return history


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> tuple[float, float]:
    module.eval()
    total, correct, loss = 0, 0, 0.0
    for images, labels in loader:
        with _autocast(device, autocast_dtype):
            logits = module(images.to(device)).float()
        labels = labels.to(device)
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    return loss / total, correct / total


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _bar(loader: Any, description: str, progress: bool) -> Iterator[Any]:
    yield from tqdm(loader, desc=description, disable=not progress, leave=False, unit="batch")

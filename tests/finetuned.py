"""A model directory fine-tuned on digits, as `resnet-serve finetune` writes it: a real small
model whose labels ("0" to "9") differ visibly from the base model's ImageNet ones."""

from pathlib import Path

import pytest

from loadtest.common.digits import write_digits_folder
from service.commands.cli import main

LITE0 = [
    "--model", "tf_efficientnet_lite0", "--weights", "lite0-package",
    "--backend", "torch", "--precision", "fp32",
]  # fmt: skip


def finetune(data: Path, out: Path, work: Path, *flags: str) -> int:
    """`resnet-serve finetune` with lite0, embedding at a fixed batch size (measuring the best
    one takes longer than the fine-tuning these tests do)."""
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as ended:
        patch.setenv("RESNET_SERVE_MAX_BATCH_SIZE", "8")
        main(["finetune", str(data), "--out", str(out), "--data-dir", str(work), *LITE0, *flags])
    return int(ended.value.code or 0)


def digits_head(root: Path, per_class: int) -> Path:
    """A head fine-tuned on `per_class` digits of each class, in root/digits (quickly: a few
    epochs)."""
    data = write_digits_folder(root / "data", per_class=per_class)
    out = root / "digits"
    flags = ("--mode", "head", "--epochs", "30", "--no-progress")
    assert finetune(data, out, root / "work", *flags) == 0
    return out

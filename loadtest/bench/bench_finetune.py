"""Fine-tuning on scikit-learn's digits (1,797 images, 10 classes): accuracy and time.

    python -m loadtest.bench.bench_finetune --epochs 8

Writes the digits as an ImageFolder (upscaled PNGs), runs `resnet-serve finetune --mode head`
and `--mode full` on it (the model from RESNET_SERVE_MODEL/WEIGHTS; offline that is the
EfficientNet-Lite0 fallback), and prints validation top-1 and wall time for each, and time
per epoch for full mode. Targets: head >= 0.90, full >= 0.97.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.common.digits import write_digits_folder


def run(data: Path, out: Path, work: Path, flags: list[str]) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "service", "finetune", str(data), "--out", str(out)]
    subprocess.run(
        [*command, "--data-dir", str(work), "--no-progress", *flags],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8, help="full mode's most epochs")
    parser.add_argument("--train-stages", type=int, help="full mode: only the last N stages")
    parser.add_argument("--modes", nargs="+", default=["head", "full"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    data = write_digits_folder(root / "digits")
    print("| mode | val top-1 | wall s | s per epoch | epochs run | best epoch |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        flags = ["--mode", mode]
        if mode == "full":
            flags += ["--epochs", str(args.epochs), "--hflip", "0"]  # digits are not symmetric
            if args.train_stages:
                flags += ["--train-stages", str(args.train_stages)]
        out = root / f"model-{mode}"
        wall = run(data, out, root / "work", flags)
        metrics = json.loads((out / "metrics.json").read_text())
        history = metrics["history"]
        per_epoch = sum(e["seconds"] for e in history) / len(history)
        print(
            f"| {mode} | {metrics['val_top1']:.4f} | {wall:.1f} | "
            f"{per_epoch:.2f} | {len(history)} | {metrics['best_epoch']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""The `resnet-serve finetune` flags (no heavy imports: `--help` stays fast)."""

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", type=Path, help="a folder with a subfolder per class (or train/, val/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--mode", choices=("head", "full"), default="head")
    parser.add_argument("--epochs", type=int, help="most epochs (head: 300, full: 10)")
    parser.add_argument("--train-stages", type=int, help="full mode: train only the last N stages")
    parser.add_argument("--batch-size", type=int, default=32, help="full mode")
    parser.add_argument(
        "--lr", type=float, help="learning rate (head: 0.05, full: 1e-3; the new head 10x)"
    )
    parser.add_argument(
        "--patience", type=int, help="epochs without improvement (head: 20, full: 3)"
    )
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument(
        "--hflip", type=float, default=0.5, help="full mode: flip probability (0 for text, digits)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="without val/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")

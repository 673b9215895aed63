"""Does an attached head answer as its model directory served alone (issue 39)? On the same
images and backend: top-1 agreement between the head on the live base and the directory
served as the whole model (`RESNET_SERVE_WEIGHTS=MODEL_DIR`).

    python -m loadtest.bench.heads_agreement --backend openvino --precision int8

Without --head, a head is fine-tuned first on scikit-learn's digits (Lite0 with its package
weights, `resnet-serve finetune --mode head`); the images are the digits it did not train on.
Two services, one after the other: the base with the head attached, then the directory
alone, both on --backend/--precision. Targets: 100% on torch fp32, >= 99% on int8.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from loadtest.common.digits import write_digits_folder
from loadtest.common.processes import LITE0_ENV, free_port, start_service, stop


def fine_tuned_head(work: Path) -> Path:
    data = write_digits_folder(work / "train", per_class=40)
    out = work / "digits"
    command = [
        *(sys.executable, "-m", "service", "finetune", str(data), "--out", str(out)),
        *("--data-dir", str(work / "finetune"), "--mode", "head", "--epochs", "30"),
        *("--model", "tf_efficientnet_lite0", "--weights", "lite0-package", "--no-progress"),
    ]
    subprocess.run(command, check=True, env=os.environ | {"RESNET_SERVE_MAX_BATCH_SIZE": "8"})
    return out


def top1(env: dict[str, str], images: list[Path], head: Path | None) -> list[str]:
    """Top-1 labels: the head's when one is given (attached to the base), else the model's."""
    port = free_port()
    service = start_service(env, port, ready_timeout_s=900)
    url = f"http://127.0.0.1:{port}"
    try:
        if head is not None:
            attached = httpx.put(f"{url}/v1/heads/h", json={"source": str(head)}, timeout=60)
            attached.raise_for_status()
        labels = []
        for image in images:
            files = {"file": (image.name, image.read_bytes(), "image/png")}
            answer = httpx.post(f"{url}/v1/classify", files=files, timeout=60).json()
            predictions = answer["heads"]["h"]["predictions"] if head else answer["predictions"]
            labels.append(predictions[0]["label"])
        return labels
    finally:
        stop(service)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--head", type=Path, help="a MODEL_DIR from finetune --mode head")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        head = args.head or fine_tuned_head(work)
        everything = write_digits_folder(work / "all")
        images = [
            path
            for digit in range(10)
            for path in sorted((everything / str(digit)).iterdir(), key=lambda p: int(p.stem))[-20:]
        ]
        env = (
            os.environ
            | LITE0_ENV
            | {
                "RESNET_SERVE_BACKEND": args.backend,
                "RESNET_SERVE_PRECISION": args.precision,
                "RESNET_SERVE_CACHE_MEMORY_BYTES": "0",
                "RESNET_SERVE_UI": "false",
            }
        )
        attached = top1(env | {"RESNET_SERVE_DATA_DIR": str(work / "base")}, images, head)
        alone_env = env | {"RESNET_SERVE_DATA_DIR": str(work / "alone")}
        alone = top1(alone_env | {"RESNET_SERVE_WEIGHTS": str(head)}, images, None)
    agree = sum(a == b for a, b in zip(attached, alone, strict=True)) / len(images)
    bound = 1.0 if args.precision == "fp32" else 0.99
    print(
        f"{'PASS' if agree >= bound else 'FAIL'} {args.backend} {args.precision}: the head "
        f"attached and its directory alone agree on {agree:.1%} of {len(images)} top-1s; "
        f">= {bound:.0%}"
    )


if __name__ == "__main__":
    main()

"""Raw in-process throughput per backend x precision x batch size (no HTTP, no batcher).

    python -m loadtest.bench.bench_model --weights random --batch-sizes 1 8
    python -m loadtest.bench.bench_model --weights random --backends torch --precisions fp32

Settings come from RESNET_SERVE_* like the service (default model ResNet50; use --weights
random where the pretrained weights cannot be had: the compute is identical). The share of
the compute roof uses --gflop-per-image (ResNet50 at 224 px: 8.2) and the machine's peak
GFLOP/s per precision (defaults: this 2-core Zen 4, see DESIGN.md: 26/51/102 img/s).
"""

import argparse
import logging

from service.model.backend import InferenceBackend
from service.model.runtime import load_parts
from service.model.selection import Candidate, build, candidates, images_per_second
from service.model.spec import ModelSpec
from service.settings import Settings

PEAK_GFLOPS = {"fp32": 26 * 8.2, "bf16": 51 * 8.2, "fp16": 51 * 8.2, "int8": 102 * 8.2}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--weights")
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16", "int8"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gflop-per-image", type=float, default=8.2)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: v for k, v in {"model": args.model, "weights": args.weights}.items() if v}
    settings = Settings(**overrides)
    parts = load_parts(settings)
    spec = parts.spec
    options = [
        c
        for c in candidates(settings, parts.device)
        if c.backend in args.backends and c.precision in args.precisions
    ]
    print(
        f"model={spec.model_id} weights={spec.weights} device={parts.device} "
        f"threads={settings.threads}"
    )
    print("| backend | precision | batch | img/s | share of roof |\n|---|---|---|---|---|")
    for option in options:
        report(
            option,
            build(option, parts, settings),
            spec,
            args.batch_sizes,
            args.gflop_per_image,
            args.seconds,
        )


def report(
    option: Candidate,
    backend: InferenceBackend,
    spec: ModelSpec,
    sizes: list[int],
    gflop: float,
    seconds: float,
) -> None:
    for size in sizes:
        speed = images_per_second(backend, spec, size, seconds)
        share = speed * gflop / PEAK_GFLOPS[option.precision]
        print(
            f"| {option.backend} | {option.precision} | {size} | {speed:.1f} | {share:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Raw in-process throughput of the configured model backend (no HTTP, no batcher).

    python -m loadtest.bench_model --batch-sizes 1 8 --seconds 20

Settings come from RESNET_SERVE_* like the service (default: ResNet50; pass --weights random
on a machine without the pretrained weights: the compute is identical).
"""

import argparse
import logging
import time

import numpy as np

from service.model.runtime import ModelRuntime, load_runtime
from service.settings import Settings


def images_per_second(runtime: ModelRuntime, batch_size: int, seconds: float) -> float:
    shape = (3, *runtime.preprocessor.input_size)
    batch = [np.random.default_rng(0).standard_normal(shape, dtype=np.float32)] * batch_size
    runtime.predict_batch(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        runtime.predict_batch(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--weights")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=20.0, help="per batch size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    overrides = {k: v for k, v in {"model": args.model, "weights": args.weights}.items() if v}
    settings = Settings(**overrides)
    runtime = load_runtime(settings)
    print(
        f"model={runtime.spec.model_id} weights={runtime.spec.weights} "
        f"backend={runtime.backend.name} threads={settings.threads}"
    )
    print("| batch | img/s |\n|---|---|")
    for batch_size in args.batch_sizes:
        print(
            f"| {batch_size} | {images_per_second(runtime, batch_size, args.seconds):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

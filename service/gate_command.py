"""`resnet-serve gate`: accuracy and speed of every backend candidate on this machine."""

import torch

from service.images import Preprocessor
from service.model.backend import resolve_device
from service.model.selection import candidates, evaluate
from service.model.spec import ModelSpec
from service.model.weights import RANDOM, load_model
from service.settings import Settings


def run_gate_command(settings: Settings) -> int:
    """Print one table row per candidate; exit 1 when none passes the gate."""
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)
    loaded = load_model(settings.model, settings.weights)
    spec = ModelSpec.of(loaded)
    preprocessor = Preprocessor(spec.data_config, max_pixels=settings.max_image_pixels)
    real_weights = loaded.weights != RANDOM
    evaluated = evaluate(
        candidates(settings, device),
        loaded.module,
        spec,
        settings,
        device,
        preprocessor.transform,
        real_weights,
    )
    print(f"model={spec.model_id} weights={spec.weights} images={evaluated[0].gate.images}")
    print("| candidate | img/s | top-1 agreement | median emb. cos | median logit cos | passed |")
    print("|---|---|---|---|---|---|")
    for e in evaluated:
        gate = e.gate
        top1 = (
            "n/a (random weights)" if gate.top1_agreement is None else f"{gate.top1_agreement:.3f}"
        )
        verdict = "yes" if gate.passed else f"no: {gate.reason}"
        print(
            f"| {e.candidate} | {e.images_per_s:.1f} | {top1} | "
            f"{gate.median_embedding_cosine:.4f} | {gate.median_logit_cosine:.4f} | {verdict} |"
        )
    return 0 if any(e.gate.passed for e in evaluated) else 1

"""`resnet-serve gate`: accuracy and speed of every backend candidate on this machine."""

from service.model.backend_search import evaluate
from service.model.gate import GATE_IMAGES
from service.model.runtime import load_parts
from service.model.selection import candidates
from service.settings import Settings


def run_gate_command(settings: Settings) -> int:
    """Print one table row per candidate; exit 1 when none passes the gate."""
    parts = load_parts(settings)
    spec = parts.spec
    evaluated, failed, skipped = evaluate(candidates(settings, parts.device), parts, settings)
    print(f"model={spec.model_id} weights={spec.weights} images={GATE_IMAGES}")
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
    for failure in failed:
        print(f"| {failure.candidate} | - | - | - | - | no: failed: {failure.error} |")
    for candidate, why in skipped:
        print(f"| {candidate} | - | - | - | - | not built: {why} |")
    return 0 if any(e.gate.passed for e in evaluated) else 1

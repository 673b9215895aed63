"""Accuracy gate: a faster backend must agree with the fp32 torch reference on real images."""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from service.model.backend import InferenceBackend

# Top-1 agreement each precision must reach against the reference (real weights).
MIN_TOP1 = {"fp32": 0.99, "fp16": 0.99, "bf16": 0.99, "int8": 0.97}
MIN_MEDIAN_COSINE = 0.99
GATE_IMAGES = 200


@dataclass(frozen=True)
class GateResult:
    backend: str
    images: int
    top1_agreement: float | None  # None with random weights, where top-1 means nothing
    median_embedding_cosine: float
    median_logit_cosine: float
    passed: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check(
    candidate: InferenceBackend,
    precision: str,
    images: np.ndarray,
    reference: tuple[np.ndarray, np.ndarray],
    *,
    real_weights: bool,
    batch: int = 8,
    pause: Callable[[], object] | None = None,
) -> GateResult:
    """Compare candidate outputs with the reference outputs of the same images.

    With real weights: top-1 agreement and median embedding cosine. With random weights the
    classes mean nothing, so only the embedding and (centred log-probability) logit cosines.
    """
    ref_probabilities, ref_embeddings = reference
    probabilities, embeddings = outputs(candidate, images, batch, pause)
    embedding_cosine = float(np.median(np.sum(embeddings * ref_embeddings, axis=1)))
    logit_cosine = float(np.median(_row_cosine(_logits(probabilities), _logits(ref_probabilities))))
    top1 = float(np.mean(probabilities.argmax(1) == ref_probabilities.argmax(1)))
    failures = []
    if embedding_cosine < MIN_MEDIAN_COSINE:
        failures.append(f"median embedding cosine {embedding_cosine:.4f} < {MIN_MEDIAN_COSINE}")
    if real_weights and top1 < MIN_TOP1[precision]:
        failures.append(f"top-1 agreement {top1:.3f} < {MIN_TOP1[precision]}")
    if not real_weights and logit_cosine < MIN_MEDIAN_COSINE:
        failures.append(f"median logit cosine {logit_cosine:.4f} < {MIN_MEDIAN_COSINE}")
    return GateResult(
        backend=candidate.name,
        images=len(images),
        top1_agreement=top1 if real_weights else None,
        median_embedding_cosine=embedding_cosine,
        median_logit_cosine=logit_cosine,
        passed=not failures,
        reason="; ".join(failures) or "within bounds",
    )


def outputs(
    backend: InferenceBackend,
    images: np.ndarray,
    batch: int = 8,
    pause: Callable[[], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and embeddings of `images`, `batch` at a time (`pause` before each)."""
    parts = []
    for i in range(0, len(images), batch):
        if pause is not None:
            pause()
        parts.append(backend.forward(images[i : i + batch]))
    return (
        np.concatenate([p.probabilities for p in parts]),
        np.concatenate([p.embedding for p in parts]),
    )


def _logits(probabilities: np.ndarray) -> np.ndarray:
    # Logits up to a per-row constant; centring removes it.
    log_p = np.log(np.clip(probabilities, 1e-30, None))
    centred: np.ndarray = log_p - log_p.mean(axis=1, keepdims=True)
    return centred


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine: np.ndarray = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
    return cosine

"""The search for the fastest backend that passes the accuracy gate, and what decides it.

`first_choice` is what a service starts on: the cached decision, the pinned backend, or,
with `auto` and nothing cached, the reference at once while `search_backends` runs in the
background (service.hosting.host). `choose` is the same decision made before returning, for
the commands that need the final backend (finetune, index reindex).

Each candidate is built, gated against the fp32 torch reference on real images and timed;
one that raises anywhere is dropped with its reason and the others are still compared. A
costly candidate that cannot win is not built: one that failed the gate on an earlier start
with the same model and libraries is skipped, and before a full int8 quantization (minutes
on 2 cores) a quick one on a few images must pass the gate within a margin and beat the best
so far. Progress, with an estimate of what is left, goes to the log as each candidate ends.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from service.model import selection
from service.model.backend import InferenceBackend, TorchBackend
from service.model.device_memory import release_cached_memory
from service.model.gate import GATE_IMAGES, MIN_MEDIAN_COSINE, MIN_TOP1, GateResult, check, outputs
from service.model.samples import sample_images
from service.model.selection import Candidate, Choice, ModelParts
from service.model.serving_gaps import ServingGaps
from service.settings import Settings

log = logging.getLogger(__name__)

# A quick int8 pass: this many calibration images and a cheap bias correction. Its gate
# result must come within this margin of the bound, or the full quantization is not run.
PROBE_CALIBRATION_IMAGES = 32
PROBE_MARGIN = 0.02
# Relative cost of a candidate, for the estimate of what is left (a full int8 quantization
# costs several conversions).
_COST = {"torch": 1.0, "torch-compile": 4.0, "openvino": 2.0, "openvino-int8": 8.0}


@dataclass
class SearchProgress:
    """What the background search has done and what it expects, for /readyz and the log."""

    started: float = field(default_factory=time.monotonic)
    total: int = 0
    done: list[str] = field(default_factory=list)
    _cost_done: float = 0.0
    _cost_total: float = 0.0
    outcome: str | None = None

    def begin(self, options: list[Candidate]) -> None:
        self.total = len(options)
        self._cost_total = sum(_cost(option) for option in options)
        log.info("backend search: %d candidates (%s)", self.total, ", ".join(map(str, options)))

    def candidate_started(self, candidate: Candidate) -> None:
        log.info(
            "backend search %d/%d: trying %s (%s)",
            len(self.done) + 1,
            self.total,
            candidate,
            self.estimate(),
        )

    def candidate_done(self, candidate: Candidate, summary: str) -> None:
        self.done.append(f"{candidate}: {summary}")
        self._cost_done += _cost(candidate)
        log.info(
            "backend search %d/%d: %s: %s; %s",
            len(self.done),
            self.total,
            candidate,
            summary,
            self.estimate(),
        )

    def estimate(self) -> str:
        elapsed = time.monotonic() - self.started
        if not self._cost_done:
            return "no estimate before the first candidate ends"
        left = elapsed / self._cost_done * (self._cost_total - self._cost_done)
        return f"about {left:.0f} s left"

    def snapshot(self) -> "SearchProgress":
        """A plain copy (to send to another process)."""
        return SearchProgress(
            self.started, self.total, list(self.done), self._cost_done, self._cost_total
        )

    def adopt(self, other: "SearchProgress") -> None:
        """Take what another process's search has done and expects (its clock is ours:
        monotonic time is the machine's)."""
        self.started = other.started
        self.total = other.total
        self.done = list(other.done)
        self._cost_done = other._cost_done
        self._cost_total = other._cost_total

    def finish(self, outcome: str) -> None:
        self.outcome = outcome
        log.info("backend search done after %.0f s: %s", time.monotonic() - self.started, outcome)

    def describe(self) -> str:
        if self.outcome is not None:
            return f"done: {self.outcome}"
        return (
            f"searching for a faster backend: {len(self.done)} of {self.total} candidates "
            f"tried, {self.estimate()}"
        )


def _cost(candidate: Candidate) -> float:
    key = "openvino-int8" if candidate.precision == "int8" else candidate.backend
    return _COST.get(key, 1.0)


def reference_candidate(
    parts: ModelParts, settings: Settings
) -> tuple[Candidate, InferenceBackend]:
    """What serves while the search runs: torch fp32 on a CPU; fp16 on a GPU where it passes
    the gate (twice as fast there, and checked in a second)."""
    fp32 = Candidate("torch", "fp32")
    if parts.device.type != "cuda" or settings.precision == "fp32":
        return fp32, selection.build(fp32, parts, settings)
    fp16 = Candidate("torch", "fp16")
    images, reference = _gate_inputs(parts)
    try:
        backend = selection.build(fp16, parts, settings)
        gate = check(backend, "fp16", images, reference, real_weights=parts.real_weights)
    except Exception as exc:  # fp16 broken here: the reference is fp32
        log.warning("torch fp16 cannot serve first (%s): starting on fp32", _describe(exc))
        return fp32, selection.build(fp32, parts, settings)
    if gate.passed:
        return fp16, backend
    return fp32, selection.build(fp32, parts, settings)


def first_choice(parts: ModelParts, settings: Settings) -> tuple[Choice, InferenceBackend, bool]:
    """The backend to be ready on now, and whether a search for a faster one is due."""
    decided = _decided(parts, settings)
    if decided is not None:
        return (*decided, False)
    if settings.backend != "auto" or settings.precision not in ("auto", "fp32"):
        # The torch fp32 reference is not among what was asked for: decide before serving.
        return (*search_backends(parts, settings), False)
    candidate, backend = reference_candidate(parts, settings)
    batch = settings.max_batch_size or selection.COMPARE_AT[parts.device.type]
    reason = "the reference, serving while a faster backend is searched for in the background"
    return Choice(candidate, batch, reason), backend, True


def choose(parts: ModelParts, settings: Settings) -> tuple[Choice, InferenceBackend]:
    """The backend to serve with; measured once per machine and model, then read from disk."""
    return _decided(parts, settings) or search_backends(parts, settings)


def _decided(parts: ModelParts, settings: Settings) -> tuple[Choice, InferenceBackend] | None:
    """A decision made for this model, machine and libraries (one shipped in
    BACKEND_DECISIONS first, then the model cache), or the only candidate the settings allow;
    None: search."""
    options = selection.candidates(settings, parts.device)
    identity = selection.decision_identity(settings, parts.spec, options, parts.device)
    for root in _decision_roots(settings):
        record = selection.decision_path(root, identity)
        cached = selection.read_decision(record, identity)
        if cached is None:
            continue
        try:
            backend = selection.build(cached.candidate, parts, settings, cache_root=root)
        except Exception as exc:  # a library changed under the cache: decide again
            parts.fallbacks.warn(
                "backend_cache",
                f"the backend choice in {record} ({cached.candidate}) failed to build "
                f"({_describe(exc)}); choosing again",
            )
            continue
        log.info("backend choice from %s: %s (%s)", record, cached.candidate, cached.reason)
        return cached, backend
    if len(options) == 1:
        (only,) = options
        backend = selection.build(only, parts, settings)
        batch = settings.max_batch_size or selection.preferred_batch_size(
            backend, parts.spec, parts.device
        )
        choice = Choice(only, batch, "pinned by RESNET_SERVE_BACKEND/PRECISION")
        _record(settings, identity, choice)
        return choice, backend
    return None


def _decision_roots(settings: Settings) -> list[Path]:
    shipped = [] if settings.backend_decisions is None else [settings.backend_decisions]
    return [*shipped, settings.model_cache_dir]


def _record(settings: Settings, identity: dict[str, object], choice: Choice) -> None:
    """Cache a decision in the model cache (a failure to write costs the next start a
    search, never this one its backend)."""
    try:
        selection.write_decision(
            selection.decision_path(settings.model_cache_dir, identity), choice, identity
        )
    except OSError as exc:
        log.warning("could not cache the backend decision (%s): the next start decides again", exc)


def search_backends(
    parts: ModelParts,
    settings: Settings,
    progress: SearchProgress | None = None,
    gaps: ServingGaps | None = None,
    provisional: Callable[[Choice], object] | None = None,
) -> tuple[Choice, InferenceBackend]:
    """Evaluate every candidate, keep the fastest that passes the gate, cache the decision.

    `gaps`: a search beside a serving model runs in its gaps (raising SearchCancelled when it
    stops). A decision that could only be measured while serving overlapped it is handed to
    `provisional` (to serve meanwhile), measured again once serving is quiet, and only then
    cached as final."""
    progress = progress or SearchProgress()
    options = selection.candidates(settings, parts.device)
    identity = selection.decision_identity(settings, parts.spec, options, parts.device)
    evaluated, failed, skipped = evaluate(options, parts, settings, progress, gaps)
    choice, backend = _fastest(evaluated, failed, skipped, parts, settings, gaps, len(options))
    while gaps is not None and gaps.under_load:
        if provisional is not None:
            provisional(choice)
        log.info("backend search: measured under load; measuring again once serving is quiet")
        gaps.wait_for_quiet()
        compare_at = settings.max_batch_size or selection.COMPARE_AT[parts.device.type]
        evaluated = [
            replace(
                e,
                images_per_s=selection.images_per_second(
                    e.backend, parts.spec, compare_at, gaps=gaps
                ),
            )
            if e.gate.passed
            else e
            for e in evaluated
        ]
        choice, backend = _fastest(evaluated, failed, skipped, parts, settings, gaps, len(options))
        choice.reason += "; measured again with serving idle"
    _record(settings, identity, choice)
    return choice, backend


def _fastest(
    evaluated: list["Evaluation"],
    failed: list["Failure"],
    skipped: list[tuple[Candidate, str]],
    parts: ModelParts,
    settings: Settings,
    gaps: ServingGaps | None,
    considered: int,
) -> tuple[Choice, InferenceBackend]:
    """The fastest candidate that passed the gate, at its preferred batch size."""
    passing = sorted(
        (e for e in evaluated if e.gate.passed), key=lambda e: e.images_per_s, reverse=True
    )
    dropped = list(failed)
    for best in passing:
        if gaps is not None:
            gaps.check()
        try:
            batch = settings.max_batch_size or selection.preferred_batch_size(
                best.backend, parts.spec, parts.device, gaps
            )
        except Exception as exc:  # fails at another batch size: the next fastest serves
            dropped.append(Failure(best.candidate, _describe(exc)))
            log.warning("candidate %s dropped: %s", best.candidate, dropped[-1].error)
            continue
        break
    else:
        measurements = [e.as_dict() for e in evaluated] + [f.as_dict() for f in dropped]
        raise RuntimeError(f"no backend passed the accuracy gate: {measurements}")
    measurements = [e.as_dict() for e in evaluated] + [f.as_dict() for f in dropped]
    reason = (
        f"fastest of {considered} candidates passing the accuracy gate "
        f"({best.images_per_s:.1f} img/s); rejected: "
        + (
            ", ".join(f"{e.candidate} ({e.gate.reason})" for e in evaluated if not e.gate.passed)
            or "none"
        )
    )
    if skipped:
        reason += "; not built: " + ", ".join(f"{c} ({why})" for c, why in skipped)
    if dropped:
        lost = ", ".join(f"{f.candidate} ({f.error})" for f in dropped)
        reason += f"; failed: {lost}"
        parts.fallbacks.warn("backend_candidates", f"backend candidates dropped: {lost}")
    return Choice(best.candidate, batch, reason, measurements, best.images_per_s), best.backend


@dataclass(frozen=True)
class Evaluation:
    candidate: Candidate
    backend: InferenceBackend
    gate: GateResult
    images_per_s: float
    seconds: float  # to build (convert, quantize) and check

    def as_dict(self) -> dict[str, object]:
        return {
            "candidate": str(self.candidate),
            "img_per_s": round(self.images_per_s, 2),
            "build_and_check_s": round(self.seconds, 1),
            **self.gate.as_dict(),
        }


@dataclass(frozen=True)
class Failure:
    """A candidate that raised while it was built, gated or timed: dropped, with why."""

    candidate: Candidate
    error: str

    def as_dict(self) -> dict[str, object]:
        return {"candidate": str(self.candidate), "error": self.error}


def evaluate(
    options: list[Candidate],
    parts: ModelParts,
    settings: Settings,
    progress: SearchProgress | None = None,
    gaps: ServingGaps | None = None,
) -> tuple[list[Evaluation], list[Failure], list[tuple[Candidate, str]]]:
    """Gate (against torch fp32 on real sample images) and speed of every candidate: those
    that passed or failed the gate, those that raised (with why), and those not built because
    they could not win (with why)."""
    progress = progress or SearchProgress()
    progress.begin(options)
    pause = None if gaps is None else gaps.pause
    images, reference = _gate_inputs(parts, pause)
    history = GateHistory(settings.model_cache_dir / "gate-failures.json")
    compare_at = settings.max_batch_size or selection.COMPARE_AT[parts.device.type]
    evaluated: list[Evaluation] = []
    failed: list[Failure] = []
    skipped: list[tuple[Candidate, str]] = []
    for option in options:
        if gaps is not None:
            gaps.check()
        progress.candidate_started(option)
        started = time.perf_counter()
        key = history.key(parts, option)
        best = max((e.images_per_s for e in evaluated if e.gate.passed), default=0.0)
        why_not = history.failure(key) or _int8_cannot_win(
            option, parts, settings, (images, reference), best, compare_at, gaps
        )
        if why_not is not None:
            skipped.append((option, why_not))
            progress.candidate_done(option, f"not built: {why_not}")
            continue
        try:
            backend = selection.build(option, parts, settings)
            if gaps is not None:
                gaps.check()
            gate = check(
                backend,
                option.precision,
                images,
                reference,
                real_weights=parts.real_weights,
                pause=pause,
            )
            speed = selection.images_per_second(backend, parts.spec, compare_at, gaps=gaps)
        except Exception as exc:  # whatever one candidate does, the others are still compared
            release_cached_memory()
            failed.append(Failure(option, _describe(exc)))
            progress.candidate_done(option, f"dropped: {failed[-1].error}")
            continue
        seconds = time.perf_counter() - started
        evaluated.append(Evaluation(option, backend, gate, speed, seconds))
        if not gate.passed:
            history.record(key, gate.reason)
        verdict = "passes the gate" if gate.passed else f"fails the gate ({gate.reason})"
        progress.candidate_done(option, f"{speed:.1f} img/s, {verdict}, {seconds:.0f} s")
    return evaluated, failed, skipped


def _int8_cannot_win(
    option: Candidate,
    parts: ModelParts,
    settings: Settings,
    gate_inputs: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]],
    best_speed: float,
    compare_at: int,
    gaps: ServingGaps | None,
) -> str | None:
    """Why a full int8 quantization is not worth building, from a quick one; None: build it."""
    if option.precision != "int8":
        return None
    images, reference = gate_inputs
    started = time.perf_counter()
    probe = selection.build(
        option, parts, settings, calibration_images=PROBE_CALIBRATION_IMAGES, fast=True
    )
    pause = None if gaps is None else gaps.pause
    gate = check(probe, "int8", images, reference, real_weights=parts.real_weights, pause=pause)
    speed = selection.images_per_second(probe, parts.spec, compare_at, gaps=gaps)
    seconds = time.perf_counter() - started
    top1_bound = MIN_TOP1["int8"] - PROBE_MARGIN
    short = []
    if gate.median_embedding_cosine < MIN_MEDIAN_COSINE - PROBE_MARGIN:
        short.append(f"median embedding cosine {gate.median_embedding_cosine:.3f}")
    if gate.top1_agreement is not None and gate.top1_agreement < top1_bound:
        short.append(f"top-1 agreement {gate.top1_agreement:.3f}")
    if short:
        return (
            f"a quick int8 pass ({PROBE_CALIBRATION_IMAGES} calibration images, {seconds:.0f} s) "
            f"is too far from the gate: {', '.join(short)}"
        )
    if speed <= best_speed:
        return (
            f"a quick int8 pass ({seconds:.0f} s) runs {speed:.1f} img/s, no faster than the "
            f"best so far ({best_speed:.1f})"
        )
    return None


class GateHistory:
    """Gate failures by model, candidate and library versions, kept across starts: a
    candidate that failed once fails again, so it is not built again (int8: minutes)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def key(self, parts: ModelParts, option: Candidate) -> str:
        return f"{parts.spec.fingerprint}|{option}|{'|'.join(selection.library_versions())}"

    def failure(self, key: str) -> str | None:
        reason = self._read().get(key)
        return None if reason is None else f"failed the accuracy gate before: {reason}"

    def record(self, key: str, reason: str) -> None:
        failures = self._read() | {key: reason}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(failures, indent=2))
        temporary.replace(self._path)  # atomic: a reader sees the old file or the new one

    def _read(self) -> dict[str, str]:
        try:
            loaded = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _gate_inputs(
    parts: ModelParts, pause: Callable[[], object] | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The gate's images and the fp32 reference's outputs for them."""
    log.info("accuracy gate: %d images through the fp32 reference", GATE_IMAGES)
    samples = sample_images(GATE_IMAGES, seed=2)
    images = np.stack([parts.preprocessor.pixels(image) for image in samples])
    reference = outputs(
        TorchBackend(parts.module, parts.spec.data_config, parts.device, "fp32"),
        images,
        pause=pause,
    )
    return images, reference


def _describe(error: BaseException) -> str:
    """One line: the error's type and the first line of its message (inductor's run long)."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:300]}" if message else type(error).__name__

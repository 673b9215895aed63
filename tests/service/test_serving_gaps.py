"""The backend search runs in the gaps of serving: a timing that a serving batch overlapped
is thrown away, and a decision that could only be measured under load is measured again
with serving idle before it is cached as final."""

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.hosting.host import ModelHost
from service.model import backend_search, selection, serving_gaps
from service.model.backend_search import Evaluation, search_backends
from service.model.gate import GateResult
from service.model.model_io import ModelOutputs
from service.model.runtime import load_parts
from service.model.search_process import CONTEXT
from service.model.selection import Candidate, Choice, ModelParts
from service.model.serving_gaps import MAX_DISCARDED, ServingActivity, ServingGaps
from tests.conftest import lite0_settings
from tests.photos import jpeg


class SharedCores:
    """A backend whose forward takes 10 ms alone and 60 ms when a serving batch runs
    beside it: the batches overlap the forwards whose numbers are in `overlapped`."""

    def __init__(self, activity: ServingActivity, overlapped: set[int]) -> None:
        self.name = "shared"
        self._activity, self._overlapped = activity, overlapped
        self.calls = 0

    def forward(self, pixels: np.ndarray) -> ModelOutputs:
        self.calls += 1
        if self.calls in self._overlapped:
            self._activity.busy()  # a request arrives: serving runs beside this forward
            time.sleep(0.06)
            self._activity.idle()
        else:
            time.sleep(0.01)
        n = len(pixels)
        return ModelOutputs(np.zeros((n, 1000), np.float32), np.zeros((n, 8), np.float32))


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> ModelParts:
    return load_parts(lite0_settings(tmp_path_factory.mktemp("data")))


def test_a_timing_overlapped_by_a_serving_batch_is_discarded(lite0: ModelParts) -> None:
    activity = ServingActivity(CONTEXT)
    backend = SharedCores(activity, overlapped={3, 5, 6, 9})  # call 1 is the warm-up
    gaps = ServingGaps(activity, threading.Event())
    speed = selection.images_per_second(backend, lite0.spec, 4, seconds=0.1, gaps=gaps)  # type: ignore[arg-type]
    assert gaps.discarded == 4 and not gaps.under_load
    assert speed == pytest.approx(4 / 0.01, rel=0.3)  # the 60 ms forwards are not counted


def test_a_search_that_can_only_measure_under_load_says_so(lite0: ModelParts) -> None:
    activity = ServingActivity(CONTEXT)
    backend = SharedCores(activity, overlapped=set(range(2, 100)))  # serving never pauses
    gaps = ServingGaps(activity, threading.Event())
    selection.images_per_second(backend, lite0.spec, 4, seconds=0.1, gaps=gaps)  # type: ignore[arg-type]
    assert gaps.discarded >= MAX_DISCARDED and gaps.under_load


def test_waiting_for_the_quiet_ends_once_serving_has_been_idle_long_enough() -> None:
    activity = ServingActivity(CONTEXT)
    gaps = ServingGaps(activity, threading.Event())
    gaps.under_load = True
    activity.busy()
    threading.Timer(0.2, activity.idle).start()
    started = time.monotonic()
    gaps.wait_for_quiet(quiet_s=0.3)
    assert time.monotonic() - started >= 0.45 and not gaps.under_load


def test_a_decision_measured_under_load_is_measured_again_in_the_quiet(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = GateResult("any", 200, None, 1.0, 1.0, True, "")
    loud = {"torch/fp32": 10.0, "openvino/fp32": 20.0}  # measured with serving beside them
    quiet = {"torch/fp32": 30.0, "openvino/fp32": 5.0}  # what they do alone
    options = [Candidate("torch", "fp32"), Candidate("openvino", "fp32")]

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    def evaluate_under_load(*args: object) -> tuple[list[Evaluation], list[object], list[object]]:
        gaps = args[4]
        assert isinstance(gaps, ServingGaps)
        gaps.under_load = True  # as if every timing had a serving batch beside it
        evaluated = [Evaluation(c, Named(str(c)), passed, loud[str(c)], 1.0) for c in options]  # type: ignore[arg-type]
        return evaluated, [], []

    def alone(backend: Named, *_: object, **__: object) -> float:
        return quiet[backend.name]

    monkeypatch.setattr(backend_search, "evaluate", evaluate_under_load)
    monkeypatch.setattr(selection, "images_per_second", alone)
    monkeypatch.setattr(selection, "candidates", lambda *_: options)
    monkeypatch.setattr(serving_gaps, "QUIET_S", 0.05)
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=4)
    provisional: list[Choice] = []
    activity = ServingActivity(CONTEXT)
    gaps = ServingGaps(activity, threading.Event())
    choice, _ = search_backends(lite0, settings, gaps=gaps, provisional=provisional.append)
    assert [c.candidate for c in provisional] == [Candidate("openvino", "fp32")]
    assert choice.candidate == Candidate("torch", "fp32") and choice.images_per_s == 30.0
    assert "measured again with serving idle" in choice.reason
    identity = selection.decision_identity(settings, lite0.spec, options, lite0.device)
    cached = selection.read_decision(
        selection.decision_path(settings.model_cache_dir, identity), identity
    )
    assert cached is not None and cached.candidate == Candidate("torch", "fp32")


def test_the_admission_estimate_follows_a_backend_swap(tmp_path: Path) -> None:
    """Swapped in with its measured speed, a backend's cost is what admission predicts with
    from the next request on."""
    with TestClient(create_app(lite0_settings(tmp_path))) as http:
        host: ModelHost = http.app.state.pipeline.model.host  # type: ignore[attr-defined]
        answer = http.post("/v1/classify", files={"file": ("c.jpg", jpeg("coffee"), "image/jpeg")})
        assert answer.status_code == 200  # the reference's cost, measured
        live = host.runtime
        for speed in (1000.0, 2.0):
            swapped = replace(live, choice=replace(live.choice, images_per_s=speed))
            http.portal.call(host.replace, swapped, "a faster backend")  # type: ignore[union-attr]
            assert host.batcher.predicted_latency_s() == pytest.approx(live.batch_size / speed)

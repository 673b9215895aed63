"""A first start is ready on the reference backend at once; the search for a faster one runs
in the background, and its winner is swapped in while requests keep being answered."""

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import model_host
from service.app import create_app
from service.model import backend_search, selection
from service.model.backend import InferenceBackend
from service.model.backend_search import GateHistory, SearchProgress, evaluate
from service.model.model_io import ModelOutputs
from service.model.runtime import load_parts
from service.model.selection import Candidate, ModelParts
from service.model_host import ModelHost
from tests.conftest import lite0_settings
from tests.photos import jpeg


def openvino_wins(backend: InferenceBackend, spec: object, batch_size: int, **_: object) -> float:
    """Timing without the time: one real forward (so failures surface); OpenVINO 'faster'."""
    backend.forward(np.zeros((batch_size, 224, 224, 3), np.uint8))
    return (100.0 if backend.name.startswith("openvino") else 10.0) * batch_size


def host_of(http: TestClient) -> ModelHost:
    host: ModelHost = http.app.state.pipeline.model.host  # type: ignore[attr-defined]
    return host


def metric(http: TestClient, name: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


def espresso(http: TestClient) -> int:
    answer = http.post("/v1/classify", files={"file": ("c.jpg", jpeg("coffee"), "image/jpeg")})
    if answer.status_code == 200:
        assert answer.json()["predictions"][0]["label"] == "espresso"
    return answer.status_code


def test_ready_on_the_reference_then_the_winner_is_swapped_in_under_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_search = model_host.search_backends

    def held_search(*args: object) -> object:
        assert release.wait(timeout=300)
        return real_search(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(model_host, "search_backends", held_search)
    monkeypatch.setattr(selection, "images_per_second", openvino_wins)
    monkeypatch.setattr(backend_search, "GATE_IMAGES", 50)  # the gate's own tests use 200
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=None)
    with TestClient(create_app(settings)) as http:
        ready = http.get("/readyz").json()
        assert ready["backend"] == "torch-cpu-fp32"
        assert "searched for in the background" in ready["backend_choice"]
        assert ready["backend_search"].startswith("searching for a faster backend")
        assert espresso(http) == 200  # correct answers while the search runs

        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                statuses[espresso(http)] += 1

        clients = [threading.Thread(target=keep_asking) for _ in range(3)]
        for client in clients:
            client.start()
        release.set()
        assert host_of(http).searched.wait(timeout=300)
        asked_before = sum(statuses.values())
        while sum(statuses.values()) < asked_before + 6:  # answers from the new backend too
            threading.Event().wait(0.05)
        stop.set()
        for client in clients:
            client.join()
        assert set(statuses) == {200}, statuses
        ready = http.get("/readyz").json()
        assert ready["backend"] == "openvino-cpu-fp32"
        assert ready["backend_search"].startswith("done: openvino-cpu-fp32")
        assert ready["max_batch_size"] == selection.BATCH_SIZES["cpu"][-1]  # its own batch
        assert metric(http, "model_backend_swaps_total") == 1
        assert espresso(http) == 200

    with TestClient(create_app(settings)) as http:  # the next start reads the decision
        assert host_of(http).searched.is_set()
        ready = http.get("/readyz").json()
        assert ready["backend"] == "openvino-cpu-fp32" and ready["backend_search"] is None


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> ModelParts:
    return load_parts(lite0_settings(tmp_path_factory.mktemp("data")))


class Drifting:
    """A backend whose embeddings are noise: any gate refuses it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, pixels: np.ndarray) -> ModelOutputs:
        rng = np.random.default_rng(len(pixels))
        embedding = rng.standard_normal((len(pixels), 1280)).astype(np.float32)
        embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
        probabilities = np.full((len(pixels), 1000), 1e-3, np.float32)
        return ModelOutputs(probabilities, embedding)


def counting_builds(
    monkeypatch: pytest.MonkeyPatch, make: Callable[[Candidate, dict[str, object]], object]
) -> list[tuple[str, dict[str, object]]]:
    builds: list[tuple[str, dict[str, object]]] = []

    def build(candidate: Candidate, parts: object, settings: object, **options: object) -> object:
        builds.append((str(candidate), options))
        return make(candidate, options)

    monkeypatch.setattr(selection, "build", build)
    return builds


def test_a_full_int8_quantization_that_cannot_pass_is_not_built(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = counting_builds(monkeypatch, lambda c, _: Drifting(f"probe-{c}"))
    monkeypatch.setattr(selection, "images_per_second", openvino_wins)
    settings = lite0_settings(tmp_path, backend="openvino", precision="auto")
    int8 = Candidate("openvino", "int8")
    evaluated, failed, skipped = evaluate([int8], lite0, settings)
    assert builds == [("openvino/int8", {"calibration_images": 32, "fast": True})]  # quick only
    assert not evaluated and not failed
    ((candidate, why),) = skipped
    assert candidate == int8 and "quick int8 pass" in why and "median embedding cosine" in why


def test_a_candidate_that_failed_the_gate_before_is_not_built_again(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds = counting_builds(monkeypatch, lambda c, _: Drifting(str(c)))
    monkeypatch.setattr(selection, "images_per_second", openvino_wins)
    settings = lite0_settings(tmp_path, backend="torch", precision="auto")
    bf16 = Candidate("torch", "bf16")
    evaluated, _, skipped = evaluate([bf16], lite0, settings, SearchProgress())
    assert len(evaluated) == 1 and not evaluated[0].gate.passed and not skipped
    history = GateHistory(settings.model_cache_dir / "gate-failures.json")
    assert history.failure(history.key(lite0, bf16)) is not None
    builds.clear()
    evaluated, _, skipped = evaluate([bf16], lite0, settings, SearchProgress())
    assert not builds and not evaluated
    ((_, why),) = skipped
    assert why.startswith("failed the accuracy gate before: median embedding cosine")


def test_progress_estimates_what_is_left_from_what_is_done() -> None:
    progress = SearchProgress(started=0.0)
    options = [Candidate("torch", "fp32"), Candidate("openvino", "fp32")]
    progress.begin(options)
    assert "no estimate" in progress.describe() and "0 of 2" in progress.describe()
    progress.candidate_done(options[0], "10 img/s")
    assert "1 of 2 candidates tried" in progress.describe() and "s left" in progress.describe()
    progress.finish("openvino-cpu-fp32 at batch 4")
    assert progress.describe() == "done: openvino-cpu-fp32 at batch 4"


def test_settings_that_leave_the_reference_out_decide_before_serving(
    lite0: ModelParts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decided = (selection.Choice(Candidate("openvino", "fp32"), 4, "searched"), Drifting("ov"))
    monkeypatch.setattr(backend_search, "search_backends", lambda *_: decided)
    settings = lite0_settings(tmp_path, backend="openvino", precision="auto")
    choice, _, search_due = backend_search.first_choice(lite0, settings)
    assert choice.reason == "searched" and not search_due  # never torch fp32 meanwhile
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=None)
    choice, backend_now, search_due = backend_search.first_choice(lite0, settings)
    assert choice.candidate == Candidate("torch", "fp32") and search_due
    assert choice.batch_size == selection.COMPARE_AT["cpu"] and backend_now.name == "torch-cpu-fp32"

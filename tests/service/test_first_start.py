"""A first start is ready on the reference backend at once; the search for a faster one runs
in the background, and its winner is swapped in while requests keep being answered."""

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.commands.backends_command import run_decide_command
from service.hosting.host import ModelHost
from service.model import backend_search, selection
from service.model.backend import InferenceBackend
from service.model.backend_search import GateHistory, SearchProgress, evaluate
from service.model.model_io import ModelOutputs
from service.model.runtime import load_parts
from service.model.selection import Candidate, ModelParts
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


def niceness_of_every_thread(pid: int) -> set[int]:
    """The nice value of each thread of a process, from /proc (field 19 of its stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        values.add(int(stat.rsplit(")", 1)[1].split()[16]))
    return values


def test_the_search_runs_in_a_process_niced_as_a_whole_and_its_winner_is_swapped_in(
    tmp_path: Path,
) -> None:
    """Ready on the reference at once; the search runs beside it in a process whose every
    thread is at the lowest priority; requests keep being answered (3 clients for a few
    seconds, then quiet so the search can measure); the winner is swapped in; the next start
    reads the decision."""
    settings = lite0_settings(tmp_path, backend="auto", precision="fp32", max_batch_size=4)
    with TestClient(create_app(settings)) as http:
        ready = http.get("/readyz").json()
        assert ready["backend"] == "torch-cpu-fp32"
        assert "searched for in the background" in ready["backend_choice"]
        assert ready["backend_search"].startswith("searching for a faster backend")
        host = host_of(http)
        deadline = time.monotonic() + 60  # its process is spawned from a thread of its own
        while (pid := host.search_pid) is None:
            assert time.monotonic() < deadline and not host.searched.is_set(), "no search ran"
            threading.Event().wait(0.02)

        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                statuses[espresso(http)] += 1

        clients = [threading.Thread(target=keep_asking) for _ in range(3)]
        for client in clients:
            client.start()
        seen: set[int] = set()
        for _ in range(20):  # threads come and go as candidates are built: look a few times
            if host.searched.is_set():
                break
            seen |= niceness_of_every_thread(pid)
            threading.Event().wait(0.1)
        stop.set()
        for client in clients:
            client.join()
        assert seen == {19}, seen
        assert host.searched.wait(timeout=300)
        assert set(statuses) == {200} and sum(statuses.values()) >= 3, statuses
        ready = http.get("/readyz").json()
        assert ready["backend_search"].startswith(f"done: {ready['backend']} at batch 4")
        decided = ready["backend_choice"]
        assert decided.startswith("fastest of 2 candidates passing the accuracy gate"), decided
        swaps = metric(http, "model_backend_swaps_total")
        assert swaps == (0 if ready["backend"] == "torch-cpu-fp32" else 1) or "measured" in decided
        assert espresso(http) == 200

    with TestClient(create_app(settings)) as http:  # the next start reads the decision
        assert host_of(http).searched.is_set() and host_of(http).search_pid is None
        again = http.get("/readyz").json()
        assert again["backend"] == ready["backend"] and again["backend_search"] is None


def test_a_decision_made_ahead_of_time_serves_from_the_first_request_on_its_machine_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`resnet-serve backends decide --out DIR`, shipped: a fresh start with
    BACKEND_DECISIONS=DIR serves the decided backend at once, with no search; the same
    decision recorded for another CPU or library version is not trusted."""
    monkeypatch.setattr(selection, "images_per_second", openvino_wins)
    monkeypatch.setattr(backend_search, "GATE_IMAGES", 50)  # the gate's own tests use 200
    shipped = tmp_path / "shipped"
    wanted: dict[str, object] = {"backend": "auto", "precision": "fp32", "max_batch_size": 4}
    assert run_decide_command(lite0_settings(tmp_path / "builder", **wanted), shipped) == 0
    (record,) = shipped.glob("choice-*.json")
    assert [p.name for p in shipped.glob("openvino-fp32-*")]  # the converted model travels

    fleet = lite0_settings(tmp_path / "pod", **wanted, backend_decisions=shipped)
    with TestClient(create_app(fleet)) as http:
        assert host_of(http).searched.is_set() and host_of(http).search_pid is None
        ready = http.get("/readyz").json()
        assert ready["backend"] == "openvino-cpu-fp32" and ready["backend_search"] is None
        assert espresso(http) == 200

    for field, other in (("cpu", "another CPU (avx2)"), ("versions", ["2.0.0"])):
        raw = json.loads(record.read_text())
        raw["identity"][field] = other
        record.write_text(json.dumps(raw))
        elsewhere = lite0_settings(tmp_path / field, **wanted, backend_decisions=shipped)
        _, backend, search_due = backend_search.first_choice(load_parts(elsewhere), elsewhere)
        assert search_due and backend.name == "torch-cpu-fp32", field


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

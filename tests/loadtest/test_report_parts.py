"""Content checks, the Mixed profile parser, the /metrics step summary and the service-vs-raw
summary of loadtest/."""

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from batching.batcher_types import CloseReason
from batching.metrics import PrometheusBatchObserver
from loadtest.bench.service_vs_raw import Repeat, summary
from loadtest.common.checks import classification_problem, item_problem, search_problem
from loadtest.common.scrape import parse_metrics, step_metrics
from loadtest.locust.mix import parse_mix
from loadtest.locust.runner import parse_args

GOOD_PREDICTIONS = {
    "predictions": [
        {"class_id": 967, "label": "espresso", "score": 0.7},
        {"class_id": 968, "label": "cup", "score": 0.2},
    ]
}


def test_a_sane_classification_passes() -> None:
    assert classification_problem(GOOD_PREDICTIONS, top_k=5) is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"error": {"code": "x"}}, "no predictions list"),
        ({"predictions": []}, "0 predictions"),
        ({"predictions": [{"label": "", "score": 0.5}]}, "without a label"),
        ({"predictions": [{"label": "cat", "score": 1.5}]}, "outside [0, 1]"),
        ({"predictions": [{"label": "a", "score": 0.1}, {"label": "b", "score": 0.3}]}, "order"),
        ({"predictions": [{"label": "a", "score": 0.9}, {"label": "b", "score": 0.8}]}, "sum"),
    ],
)
def test_a_wrong_classification_is_named(body: object, problem: str) -> None:
    found = classification_problem(body, top_k=5)
    assert found is not None and problem in found


def test_more_predictions_than_asked_for_is_a_problem() -> None:
    assert classification_problem(GOOD_PREDICTIONS, top_k=1) == "2 predictions for top_k=1"


def test_search_results_must_be_ranked_cosines_within_k() -> None:
    ranked = {"results": [{"id": "a", "score": 0.9}, {"id": "b", "score": 0.4}]}
    assert search_problem(ranked, k=10) is None
    assert search_problem({"results": []}, k=10) is None  # an empty index is a valid answer
    assert "2 results" in (search_problem(ranked, k=1) or "")
    unranked = {"results": [{"id": "a", "score": 0.4}, {"id": "b", "score": 0.9}]}
    assert "ranked" in (search_problem(unranked, k=10) or "")
    assert "outside" in (search_problem({"results": [{"id": "a", "score": 2.0}]}, k=10) or "")


def test_an_item_response_must_be_the_item_sent() -> None:
    assert item_problem({"id": "loadtest/x"}, "loadtest/x") is None
    assert item_problem({"id": "other"}, "loadtest/x") is not None


def test_mix_weights_parse_and_reject_mistakes() -> None:
    assert parse_mix("classify_unique=3, search=1") == {"classify_unique": 3.0, "search": 1.0}
    for bad, message in [
        ("clasify_unique=1", "unknown action"),
        ("search=x", "not name=number"),
        ("search=-1", "negative"),
        ("search=0", "no positive weight"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_step_metrics_are_deltas_of_the_service_metrics() -> None:
    registry = CollectorRegistry()
    batches = PrometheusBatchObserver(registry, max_batch_size=8, version="default")
    hits = Counter("cache_hits", "", registry=registry)
    misses = Counter("cache_misses", "", registry=registry)
    cpu = Counter("process_cpu_seconds", "", registry=registry)
    for size in (1, 8):  # before the step: must not be counted
        batches.batch_ran(size, CloseReason.FULL, 0.1, ok=True)
    before = parse_metrics(generate_latest(registry).decode())
    for size in (1, 3, 8, 8):
        batches.batch_ran(size, CloseReason.FULL, 0.1, ok=True)
    hits.inc(3)
    misses.inc(1)
    cpu.inc(5)
    batches.item_rejected("queue_full")
    after = parse_metrics(generate_latest(registry).decode())

    step = step_metrics(before, after, wall_s=10)

    assert step.batches == 4
    assert step.mean_batch_size == pytest.approx(5.0)
    assert step.batch_size_counts == {"1": 1, "3-4": 1, "5-8": 2}
    assert step.cache_hit_ratio == pytest.approx(0.75)
    assert step.server_cpu_cores == pytest.approx(0.5)
    assert step.rejected == 1
    assert step.expired == 0


@pytest.mark.parametrize(
    "argv",
    [["--users", "8,x"], ["--users", "0"], ["--seconds", "-5"], ["--scenario", "Nope"]],
)
def test_run_refuses_bad_arguments_before_starting_anything(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "loadtest/run" in capsys.readouterr().err


def test_run_passes_arguments_after_a_double_dash_to_locust() -> None:
    args = parse_args(["--users", "1,4", "--", "--mix", "search=1"])
    assert args.user_counts == [1, 4]
    assert args.locust_args == ["--mix", "search=1"]


def test_service_vs_raw_judges_each_phase_against_its_own_raw_runs_and_the_median_round() -> None:
    rounds = [
        # raw img/s before / after, service rps, batch-1 ms before / after, idle p50 ms
        Repeat(10.0, 10.0, 8.0, 30.0, 40.0, 41.0),  # a slow round: 80%
        Repeat(12.0, 8.0, 10.0, 34.0, 36.0, 39.0),  # the machine slowed mid-run: 100%
        Repeat(10.0, 10.0, 9.7, 33.0, 33.0, 37.0),  # 97%
    ]
    assert rounds[1].share == 1.0
    assert rounds[0].bound_ms(decode=2.0) == 2.0 + 35.0 + 3
    lines = summary(rounds, decode=2.0)
    assert "median service / raw = 97.0% (target >= 95%)" in lines
    assert "median p50 at 1 client = 39.0 ms; median bound = 40.0 ms" in lines
    assert len([line for line in lines if line.startswith("| ")]) == 1 + 3  # header + rounds

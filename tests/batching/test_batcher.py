"""Batcher behaviour: batching, waiting, admission, deadlines, cancellation, failure, shutdown."""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from prometheus_client import CollectorRegistry

from batching import (
    Batcher,
    BatcherStopped,
    BatchFailed,
    CloseReason,
    DeadlineExceeded,
    Priority,
    PrometheusBatchObserver,
    QueueFull,
)

VERSION = "v7"  # the model version whose batcher a test observes (the metrics' label)


class RecordingModel:
    """Doubles its inputs; records every batch; can be held mid-batch with `gate`."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise TimeoutError("test gate never opened")
        return [2 * item for item in items]

    @property
    def seen(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


BatcherFactory = Callable[..., Batcher[int, int]]


@pytest.fixture
async def make_batcher(model: RecordingModel) -> AsyncIterator[BatcherFactory]:
    made: list[Batcher[int, int]] = []

    async def factory(
        fn: Callable[[list[int]], Sequence[int]] | None = None, **options: float
    ) -> Batcher[int, int]:
        settings = {"max_batch_size": 8, "max_wait_s": 0.02, "max_queue": 64} | options
        batcher: Batcher[int, int] = Batcher(fn or model, **settings)  # type: ignore[arg-type]
        await batcher.start()
        made.append(batcher)
        return batcher

    yield factory  # type: ignore[misc]
    model.gate.set()
    for batcher in made:
        await batcher.stop(drain_timeout_s=5)


async def observed(
    make_batcher: BatcherFactory, **options: object
) -> tuple[Batcher[int, int], CollectorRegistry]:
    """A batcher reporting to its own registry."""
    registry = CollectorRegistry()
    size = int(options.get("max_batch_size", 8))  # type: ignore[call-overload]
    observer = PrometheusBatchObserver(registry, size, VERSION)
    return await make_batcher(observer=observer, **options), registry


async def wait_entered(model: RecordingModel) -> None:
    """Wait until the model thread is inside a batch."""
    assert await asyncio.to_thread(model.entered.wait, 5)


async def test_concurrent_submits_form_batches_and_keep_order(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=8, max_wait_s=0.05)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert [o.value for o in outcomes] == [2 * i for i in range(20)]
    assert max(len(b) for b in model.batches) > 1
    assert all(len(b) <= 8 for b in model.batches)
    assert sorted(model.seen) == list(range(20))


async def test_a_lone_item_waits_for_max_wait_then_runs(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_wait_s=0.5)
    task = asyncio.create_task(batcher.submit(1))
    _, pending = await asyncio.wait({task}, timeout=0.1)
    assert pending == {task} and not model.batches  # still waiting for company
    outcome = await asyncio.wait_for(task, 5)
    assert outcome.value == 2 and outcome.batch_size == 1


async def test_a_full_batch_does_not_wait(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=4, max_wait_s=30)
    outcomes = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 5)
    assert [o.batch_size for o in outcomes] == [4, 4, 4, 4]


async def test_with_no_max_wait_an_idle_model_starts_at_once(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher, registry = await observed(make_batcher, max_batch_size=8, max_wait_s=0)
    model.gate.clear()
    task = asyncio.create_task(batcher.submit(1))
    await wait_entered(model)  # alone: no second item, no timer, it is already running
    assert model.batches == [[1]]
    model.gate.set()
    assert (await task).batch_size == 1
    batches = registry.get_sample_value(
        "batcher_batches_total",
        {"version": VERSION, "reason": CloseReason.IDLE.value, "outcome": "ok"},
    )
    assert batches == 1


async def test_next_batch_fills_while_the_worker_is_busy(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=8, max_wait_s=0)
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
    await asyncio.sleep(0.05)
    assert batcher.queue_depth == 10
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in model.batches] == [1, 8, 2]


async def test_full_queue_refuses_with_retry_hint(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=1, max_wait_s=0, max_queue=2)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)
    queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await batcher.submit(3)
    assert refused.value.retry_after_s >= 1
    model.gate.set()
    assert [o.value for o in await asyncio.gather(running, *queued)] == [0, 2, 4]
    assert 3 not in model.seen


async def test_expired_item_is_answered_and_never_runs(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=1, max_wait_s=0)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(7, timeout_s=0.1)
    model.gate.set()
    await running
    assert (await batcher.submit(8, timeout_s=5)).value == 16
    assert 7 not in model.seen


async def test_cancelled_item_is_skipped(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=4, max_wait_s=0)
    model.gate.clear()
    running = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)
    abandoned = asyncio.create_task(batcher.submit(5))
    kept = asyncio.create_task(batcher.submit(6))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    model.gate.set()
    assert (await kept).value == 12
    await running
    assert abandoned.cancelled()
    assert 5 not in model.seen


async def test_raising_batch_fails_its_items_and_the_loop_goes_on(
    make_batcher: BatcherFactory,
) -> None:
    def fragile(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("unlucky batch")
        return items

    batcher = await make_batcher(fragile, max_batch_size=4, max_wait_s=0.05)
    results = await asyncio.gather(
        *(batcher.submit(i) for i in (11, 12, 13)), return_exceptions=True
    )
    assert all(isinstance(r, BatchFailed) for r in results)
    assert "unlucky batch" in str(results[0])
    assert (await batcher.submit(14)).value == 14


async def test_wrong_result_count_is_an_error(make_batcher: BatcherFactory) -> None:
    batcher = await make_batcher(lambda items: items[:-1], max_batch_size=2, max_wait_s=0.05)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, BatchFailed) for r in results)


async def test_stop_finishes_queued_work_then_refuses(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=2, max_wait_s=0)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await wait_entered(model)
    stopping = asyncio.create_task(batcher.stop(drain_timeout_s=10))
    await asyncio.sleep(0.01)
    with pytest.raises(BatcherStopped):
        await batcher.submit(99)
    model.gate.set()
    await stopping
    assert [t.result().value for t in tasks] == [0, 2, 4, 6, 8]
    assert not batcher.running


async def test_stop_fails_stuck_work_instead_of_hanging(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=1, max_wait_s=0)
    model.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await wait_entered(model)
    await asyncio.wait_for(batcher.stop(drain_timeout_s=0.2), 5)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BatcherStopped) for r in results)


async def test_metrics_record_sizes_and_close_reasons(model: RecordingModel) -> None:
    registry = CollectorRegistry()
    batcher: Batcher[int, int] = Batcher(
        model,
        max_batch_size=4,
        max_wait_s=0.05,
        max_queue=16,
        observer=PrometheusBatchObserver(registry, max_batch_size=4, version=VERSION),
    )
    await batcher.start()
    await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    await batcher.submit(9)
    await batcher.stop()

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"version": VERSION} | labels)

    assert sample("batcher_batch_size_count") == 2
    assert sample("batcher_batch_size_sum") == 5
    assert sample("batcher_batches_total", reason=CloseReason.FULL, outcome="ok") == 1
    assert sample("batcher_batches_total", reason=CloseReason.TIMEOUT, outcome="ok") == 1
    assert sample("batcher_queue_wait_seconds_count") == 5
    assert sample("batcher_queue_depth") == 0


def slow_model(seconds_per_item: float) -> Callable[[list[int]], Sequence[int]]:
    def run(items: list[int]) -> Sequence[int]:
        time.sleep(seconds_per_item * len(items))
        return items

    return run


async def test_an_item_that_would_finish_past_the_latency_target_is_refused_at_once(
    make_batcher: BatcherFactory,
) -> None:
    batcher, registry = await observed(
        make_batcher, fn=slow_model(0.2), max_batch_size=2, max_wait_s=0, max_latency_s=1.3
    )
    await batcher.submit(0)  # measures 0.2 s per item; nothing measured yet: admitted
    # Batches of 2 take 0.4 s: three batches' worth fit in 1.3 s, a fourth does not.
    admitted = [asyncio.create_task(batcher.submit(i)) for i in range(6)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await batcher.submit(99)
    assert "over the 1.3 s target" in str(refused.value)
    # Truthful: the backlog needs a few tenths of a second more before a new item fits.
    assert 0 < refused.value.retry_after_s <= 1.0
    assert [o.value for o in await asyncio.gather(*admitted)] == [0, 1, 2, 3, 4, 5]
    refusals = {"version": VERSION, "reason": "latency_target"}
    assert registry.get_sample_value("batcher_rejected_total", refusals) == 1
    await batcher.submit(5)  # drained: admitted again


async def test_items_admitted_elsewhere_count_ahead(make_batcher: BatcherFactory) -> None:
    batcher = await make_batcher(slow_model(0.1), max_batch_size=1, max_wait_s=0, max_latency_s=1)
    await batcher.submit(0)
    batcher.admit(ahead=5)  # 0.6 s: fits
    with pytest.raises(QueueFull):
        batcher.admit(ahead=12)  # 1.3 s: the 12 being decoded will queue first


async def test_a_batch_past_the_watchdog_bound_marks_the_batcher_hung_until_it_ends(
    model: RecordingModel, make_batcher: BatcherFactory, caplog: pytest.LogCaptureFixture
) -> None:
    batcher, registry = await observed(make_batcher, max_wait_s=0, hung_after_s=0.05)
    model.gate.clear()
    stuck = asyncio.create_task(batcher.submit(1))
    await wait_entered(model)
    await asyncio.sleep(0.15)
    assert batcher.hung
    assert registry.get_sample_value("batcher_hung", {"version": VERSION}) == 1
    assert registry.get_sample_value("batcher_hangs_total", {"version": VERSION}) == 1
    assert "looks hung" in caplog.text
    model.gate.set()
    assert (await stuck).value == 2
    assert not batcher.hung and registry.get_sample_value("batcher_hung", {"version": VERSION}) == 0


async def test_a_batch_within_the_watchdog_bound_is_not_hung(make_batcher: BatcherFactory) -> None:
    batcher = await make_batcher(slow_model(0.01), max_wait_s=0, hung_after_s=1)
    await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    await asyncio.sleep(0)
    assert not batcher.hung


async def test_until_a_full_batch_waits_anything_is_admitted(
    make_batcher: BatcherFactory,
) -> None:
    batcher = await make_batcher(slow_model(0.3), max_batch_size=2, max_wait_s=0, max_latency_s=0.1)
    await batcher.submit(0)  # 0.3 s per item: over the target on its own
    assert (await batcher.submit(1)).value == 1  # idle: refusing would not answer it sooner
    # The model must not run dry: one running and a full batch behind it are taken whatever
    # they cost.
    running = [asyncio.create_task(batcher.submit(2))]
    await asyncio.sleep(0.05)
    running += [asyncio.create_task(batcher.submit(i)) for i in (3, 4)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.submit(5)  # a full batch waits: now the target counts
    await asyncio.gather(*running)


async def test_owner_setup_runs_once_on_the_thread_that_runs_the_batches(
    make_batcher: BatcherFactory,
) -> None:
    set_up_on: list[int] = []
    batches_on: set[int] = set()

    def run(items: list[int]) -> list[int]:
        batches_on.add(threading.get_ident())
        return items

    batcher = await make_batcher(run, owner_setup=lambda: set_up_on.append(threading.get_ident()))
    for _ in range(3):
        await batcher.submit(1)
    assert len(set_up_on) == 1 and batches_on == set(set_up_on)


async def test_resizing_takes_effect_from_the_next_batch(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=2, max_wait_s=0)
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)  # a batch of one runs; six more queue behind it
    queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
    await asyncio.sleep(0)
    batcher.resize(max_batch_size=4, max_queue=8)
    assert batcher.max_batch_size == 4
    model.gate.set()
    await asyncio.gather(first, *queued)
    assert [len(batch) for batch in model.batches] == [1, 4, 2]
    with pytest.raises(ValueError):
        batcher.resize(max_batch_size=0, max_queue=8)


async def test_admission_predicts_with_a_replacement_s_measured_cost_at_once(
    make_batcher: BatcherFactory,
) -> None:
    """A backend swapped in faster (or slower) than the one measured so far: the very next
    admission predicts with its cost, not with the average of batches that no longer run."""
    batcher = await make_batcher(slow_model(0.1), max_batch_size=2, max_wait_s=0, max_latency_s=1)
    await batcher.submit(0)  # measured: 0.1 s an item
    with pytest.raises(QueueFull):
        batcher.admit(ahead=10)  # 12 items at 0.1 s: 1.2 s
    batcher.resize(max_batch_size=2, max_queue=64, seconds_per_item=0.02)
    batcher.admit(ahead=10)  # at the replacement's 0.02 s: 0.24 s
    assert batcher.predicted_latency_s(ahead=10) == pytest.approx(12 * 0.02)
    batcher.resize(max_batch_size=2, max_queue=64, seconds_per_item=0.5)
    with pytest.raises(QueueFull):
        batcher.admit(ahead=4)  # 6 items at 0.5 s


async def test_an_activity_listener_hears_busy_and_idle_once_each(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    heard: list[str] = []

    class Listener:
        def busy(self) -> None:
            heard.append("busy")

        def idle(self) -> None:
            heard.append("idle")

    batcher = await make_batcher(max_batch_size=2, max_wait_s=0, activity=Listener())
    model.gate.clear()
    running = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await wait_entered(model)
    assert heard == ["busy"]
    model.gate.set()
    await asyncio.gather(*running)
    assert heard == ["busy", "idle"]
    assert batcher.wait_idle(0)


async def test_interactive_items_run_before_bulk_ones_queued_earlier(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch_size=2, max_wait_s=0)
    model.gate.clear()
    first = asyncio.create_task(batcher.submit(0))
    await wait_entered(model)  # the model is busy: what follows queues
    bulk = [asyncio.create_task(batcher.submit(i, priority=Priority.BULK)) for i in (1, 2, 3)]
    await asyncio.sleep(0)
    interactive = [asyncio.create_task(batcher.submit(i)) for i in (4, 5)]
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(first, *bulk, *interactive)
    assert model.batches[1] == [4, 5]  # the next batch: interactive, though queued last
    assert model.seen == [0, 4, 5, 1, 2, 3]


async def test_bulk_items_are_refused_first_while_interactive_ones_are_taken(
    model: RecordingModel, make_batcher: BatcherFactory
) -> None:
    batcher, registry = await observed(make_batcher, max_batch_size=2, max_wait_s=0, max_queue=8)
    model.gate.clear()
    queued = [asyncio.create_task(batcher.submit(0))]
    await wait_entered(model)
    queued += [asyncio.create_task(batcher.submit(i, priority=Priority.BULK)) for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):  # half the queue holds bulk work: no more of it
        batcher.admit(priority=Priority.BULK)
    batcher.admit()  # an interactive image still finds room
    shed = {"version": VERSION, "reason": "bulk_shed"}
    assert registry.get_sample_value("batcher_rejected_total", shed) == 1
    model.gate.set()
    await asyncio.gather(*queued)


async def test_batches_shrink_to_meet_a_target_below_two_batch_times_and_grow_back(
    make_batcher: BatcherFactory,
) -> None:
    # A full batch of 8 takes at least 0.4 s: a 0.3 s target cannot be met with it.
    batcher, registry = await observed(
        make_batcher, fn=slow_model(0.05), max_batch_size=8, max_wait_s=0, max_latency_s=0.3
    )
    sizes: list[int] = []
    for _ in range(4):  # admission refuses what would wait too long; the rest is served
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(8)), return_exceptions=True
        )
        sizes += [o.batch_size for o in outcomes if not isinstance(o, BaseException)]
    assert batcher.batch_limit <= 3  # a batch of 3 takes 0.15 s: half the target
    limit = registry.get_sample_value("batcher_batch_size_limit", {"version": VERSION})
    assert sizes[-1] <= 3 and limit is not None and limit <= 3
    batcher.retarget(None)  # no target: the configured size again
    assert batcher.batch_limit == 8
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    assert max(outcome.batch_size for outcome in outcomes) == 8

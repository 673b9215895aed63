"""Images carried to a remote model host in batched calls (service.transport.hop_gather):
fewer calls than images, each image its own outcome, cancellation and versions kept apart;
and the host's side of such a call (HostedModel.infer_many)."""

import asyncio
from typing import Any

import numpy as np
import pytest

from batching import BatchOutcome, Priority
from service.errors import InvalidInput
from service.hosting.hop_batch import HopBatch, HopItem, Outcome
from service.hosting.hosted import HostedModel
from service.model.jpeg_upload import JpegUpload
from service.transport.hop_gather import HopGather
from service.transport.rpc import WorkerUnavailable

WINDOW_S = 0.005


def pixels(n: int) -> np.ndarray:
    return np.full((4, 4, 3), n, np.uint8)


class HeldHost:
    """A host that records each call's images (by their first pixel) and answers when let."""

    def __init__(self, fail: set[int] = frozenset(), down: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.called = asyncio.Condition()
        self.release = asyncio.Event()
        self._fail = fail
        self._down = down

    async def send(self, batch: HopBatch) -> list[Outcome]:
        images = [int(np.asarray(image).flat[0]) for image in batch.inputs()]
        self.calls.append(images)
        async with self.called:
            self.called.notify_all()
        await self.release.wait()
        if self._down:
            raise WorkerUnavailable("the Model deployment is not reachable (RayActorError)")
        return [
            InvalidInput(f"image {n} is not an image")
            if n in self._fail
            else (BatchOutcome(n * 2, 0.0, 0.0, len(images)), False)
            for n in images
        ]


def infer(gather: HopGather, n: int) -> "asyncio.Task[Any]":
    return asyncio.create_task(gather.infer(pixels(n), 10.0, f"key-{n}", Priority.INTERACTIVE))


async def settle() -> None:
    """Let every task run up to its next wait, and a window pass."""
    await asyncio.sleep(3 * WINDOW_S)


async def test_a_burst_reaches_the_host_in_fewer_calls_than_images() -> None:
    host = HeldHost()
    gather = HopGather(host.send, WINDOW_S, max_items=8)
    burst = [infer(gather, n) for n in range(20)]
    async with asyncio.timeout(30), host.called:  # however slowly a loaded machine gets there
        await host.called.wait_for(lambda: len(host.calls) == 4)
    # The first went at once (nothing was out); the rest gathered while it was out: a full
    # call at once, and what was left after the window.
    assert host.calls == [[0], list(range(1, 9)), list(range(9, 17)), list(range(17, 20))]
    host.release.set()
    answers = await asyncio.gather(*burst)
    assert [outcome.value for outcome, _ in answers] == [2 * n for n in range(20)]


async def test_an_image_goes_at_once_while_no_call_is_out() -> None:
    host = HeldHost()
    host.release.set()
    gather = HopGather(host.send, window_s=60, max_items=8)  # a window nobody waits for
    for n in range(3):
        outcome, _ = await asyncio.wait_for(infer(gather, n), 5)
        assert outcome.value == 2 * n
    assert host.calls == [[0], [1], [2]]


async def test_while_all_calls_are_out_images_wait_for_one_to_return() -> None:
    host = HeldHost()
    gather = HopGather(host.send, WINDOW_S, max_items=8, max_calls_out=1)
    first = infer(gather, 0)
    held = [infer(gather, n) for n in (1, 2, 3)]
    await settle()
    assert host.calls == [[0]]  # past the window, and still held: the one call is out
    host.release.set()
    await asyncio.gather(first, *held)
    assert host.calls == [[0], [1, 2, 3]]


async def test_the_time_an_image_waited_for_its_call_counts_against_its_deadline() -> None:
    sent: list[float] = []

    async def send(batch: HopBatch) -> list[Outcome]:
        sent.extend(item.timeout_s for item in batch.items)
        await asyncio.sleep(0.2)  # a call out: the next image waits for it
        return [(BatchOutcome(0, 0.0, 0.0, 1), False) for _ in batch.items]

    gather = HopGather(send, window_s=60, max_items=8, max_calls_out=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(infer(gather, 0), infer(gather, 1))
    took = loop.time() - started
    assert 10 - took <= sent[0] <= 10.0
    # It waited at least the first call's 0.2 s of its 10 (the clock's grain aside).
    assert 10 - took <= sent[1] <= 9.81


async def test_a_bad_image_fails_alone() -> None:
    host = HeldHost(fail={3})
    gather = HopGather(host.send, WINDOW_S, max_items=8)
    held = infer(gather, 0)  # out first, so the next ones share a call
    others = [infer(gather, n) for n in range(1, 6)]
    await settle()
    host.release.set()
    await held
    outcomes = await asyncio.gather(*others, return_exceptions=True)
    assert host.calls[1] == [1, 2, 3, 4, 5]
    assert isinstance(outcomes[2], InvalidInput) and "image 3" in str(outcomes[2])
    assert [o[0].value for i, o in enumerate(outcomes) if i != 2] == [2, 4, 8, 10]


async def test_a_request_cancelled_while_its_call_waits_is_dropped_from_it() -> None:
    host = HeldHost()
    gather = HopGather(host.send, window_s=60, max_items=8)
    held = infer(gather, 0)
    waiting = [infer(gather, n) for n in (1, 2, 3)]
    await settle()
    waiting[1].cancel()  # its request went away before its call did
    await asyncio.sleep(0)
    host.release.set()  # the first call returns: the host is free, the rest go at once
    await held
    answers = await asyncio.gather(waiting[0], waiting[2])
    assert host.calls == [[0], [1, 3]]
    assert [outcome.value for outcome, _ in answers] == [2, 6]


async def test_a_host_lost_with_a_call_out_fails_each_of_its_images_none_hangs() -> None:
    host = HeldHost(down=True)
    gather = HopGather(host.send, WINDOW_S, max_items=8)
    images = [infer(gather, n) for n in range(5)]
    await settle()
    host.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*images, return_exceptions=True), 5)
    assert all(isinstance(o, WorkerUnavailable) for o in outcomes), outcomes


async def test_two_versions_never_share_a_call() -> None:
    """Each version's client has its own gatherer (RemoteModel per version)."""
    hosts = {"v1": HeldHost(), "v2": HeldHost()}
    gathers = {name: HopGather(h.send, WINDOW_S, max_items=8) for name, h in hosts.items()}
    images = [infer(gathers["v1" if n % 2 else "v2"], n) for n in range(10)]
    await settle()
    for host in hosts.values():
        host.release.set()
    await asyncio.gather(*images)
    assert sorted(n for call in hosts["v1"].calls for n in call) == [1, 3, 5, 7, 9]
    assert sorted(n for call in hosts["v2"].calls for n in call) == [0, 2, 4, 6, 8]


def test_a_batch_is_one_contiguous_array_of_pixels_and_its_jpegs_in_order() -> None:
    item = HopItem(1.0, "k", Priority.BULK, "request", None)
    jpeg = JpegUpload(b"\xff\xd8 a jpeg")
    batch = HopBatch.of([(pixels(1), item), (jpeg, item), (pixels(2), item)])
    assert batch.pixels is not None and batch.pixels.shape == (2, 4, 4, 3)
    assert batch.pixels.flags.c_contiguous
    first, middle, last = batch.inputs()
    assert middle == jpeg
    assert isinstance(first, np.ndarray) and np.shares_memory(first, batch.pixels)
    assert int(first.flat[0]) == 1 and int(np.asarray(last).flat[0]) == 2


async def test_the_host_answers_each_image_of_a_call_as_alone_with_its_own_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.logs import current_request_id

    seen: list[tuple[str, float, str, Priority]] = []

    async def infer_one(
        self: HostedModel, image: Any, timeout_s: float, key: str, priority: Priority
    ) -> Any:
        seen.append((current_request_id.get(), timeout_s, key, priority))
        if key == "bad":
            raise InvalidInput("not an image")
        return BatchOutcome(key, 0.0, 0.0, 2), False

    monkeypatch.setattr(HostedModel, "infer", infer_one)
    items = [
        (pixels(1), HopItem(1.5, "good", Priority.INTERACTIVE, "r1", None)),
        (pixels(2), HopItem(2.5, "bad", Priority.BULK, "r2", None)),
    ]
    outcomes = await HostedModel.__new__(HostedModel).infer_many(HopBatch.of(items))
    assert seen == [
        ("r1", 1.5, "good", Priority.INTERACTIVE),
        ("r2", 2.5, "bad", Priority.BULK),
    ]
    assert outcomes[0][0].value == "good"  # type: ignore[index]
    assert isinstance(outcomes[1], InvalidInput)

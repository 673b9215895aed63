"""Images carried to a remote model host in batches: one call for many requests' images.

Each call to a Ray Serve replica costs milliseconds of CPU in the caller, the replica and
Ray's own processes, whatever it carries: one call per image is what bounded the Ray
application, and at a GPU's rate it would take dozens of cores. So the caller gathers the
images bound for one model version (`HopGather`, one per version's client: two versions never
share a call) and sends them in one call (`HopBatch`), adaptively as the batcher does: an
image goes at once while no call of this gatherer is out (the replica is free); while some
are out it waits at most the window for others (a full batch goes at once); and while
`max_calls_out` are out (the replicas hold all they can run next) images wait for one of
them to return, then go together: they could not have started sooner there.

Every image keeps what it had: its own deadline, admission (the host judges each on
arrival), priority, request id and trace, and its own outcome: a bad image fails alone. An
image whose request is cancelled while it waits for its call is dropped from it; once sent,
the host drops it if its batch has not started (deadline), and its answer is discarded. A
call that fails as a whole (the replica died) fails each of its images with that error.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from batching import Priority
from service import tracing
from service.hosting.hop_batch import Answer, HopBatch, HopItem, Outcome
from service.logs import current_request_id
from service.model.model_io import ModelInput


@dataclass(eq=False)  # one request's own: found by identity
class _Waiting:
    image: ModelInput
    item: HopItem
    deadline: float  # the event loop's clock: the time it waited here counts against it
    answer: "asyncio.Future[Answer]"

    def sent(self, now: float) -> tuple[ModelInput, HopItem]:
        return self.image, replace(self.item, timeout_s=max(0.0, self.deadline - now))


class HopGather:
    """Gathers concurrent images into calls of `send` (one model version's host)."""

    def __init__(
        self,
        send: Callable[[HopBatch], Awaitable[list[Outcome]]],
        window_s: float,
        max_items: int,
        max_calls_out: int = 4,
        on_call: Callable[[int], None] = lambda images: None,
    ) -> None:
        """`on_call(images)`: told of each call as it is made."""
        self._send = send
        self._on_call = on_call
        self._window_s = window_s
        self._max_calls_out = max_calls_out
        self.max_items = max_items  # the host's batch size, once it is known
        self._pending: list[_Waiting] = []
        self._calls_out = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def infer(
        self, image: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> Answer:
        loop = asyncio.get_running_loop()
        item = HopItem(timeout_s, key, priority, current_request_id.get(), tracing.carrier())
        waiting = _Waiting(image, item, loop.time() + timeout_s, loop.create_future())
        self._pending.append(waiting)
        if self._calls_out >= self._max_calls_out:
            pass  # it goes when a call returns
        elif self._calls_out == 0 or len(self._pending) >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._window_s, self._flush)
        try:
            return await waiting.answer
        except asyncio.CancelledError:
            if waiting in self._pending:  # its call has not gone: it leaves without a trace
                self._pending.remove(waiting)
            raise

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending and self._calls_out < self._max_calls_out:
            batch = self._pending[: self.max_items]
            del self._pending[: self.max_items]
            self._calls_out += 1
            self._on_call(len(batch))
            sending = asyncio.ensure_future(self._call(batch))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _call(self, batch: list[_Waiting]) -> None:
        try:
            now = asyncio.get_running_loop().time()
            outcomes = await self._send(HopBatch.of([w.sent(now) for w in batch]))
        except Exception as failed:  # the call as a whole: each image gets its error
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(failed)
        except BaseException:  # this process is stopping
            for waiting in batch:
                waiting.answer.cancel()
            raise
        else:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.answer.done():
                    continue  # cancelled while its call was out: nobody waits for it
                if isinstance(outcome, BaseException):
                    waiting.answer.set_exception(outcome)
                else:
                    waiting.answer.set_result(outcome)
        finally:
            self._calls_out -= 1
            if self._pending:
                self._flush()  # what waited for this call to return goes now

"""The seam between the pipeline and the model: pixels in, one image's outputs out.

`InProcessModel` runs the batcher and backend in this process (tests, the 2-core default);
`service.workers.remote_model.RemoteModel` sends the pixels to a model worker process.
"""

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry

from batching import BatchActivity, Batcher, BatchOutcome, PrometheusBatchObserver, QueueFull
from service.errors import InvalidInput, NotReady
from service.model.model_io import ModelInput, ModelOutputs, ModelResult
from service.model.spec import ModelSpec
from service.model.thread_priority import lower_this_threads_priority
from service.settings import Settings

if TYPE_CHECKING:  # torch: HTTP workers import this module and never load it
    from service.model.runtime import ModelRuntime
    from service.model_host import ModelHost


@dataclass(frozen=True)
class ModelStatus:
    """What is serving: the model, where and how it runs, and how busy it is."""

    spec: ModelSpec
    device: str
    backend: str
    max_batch_size: int
    backend_choice: str  # why this backend, precision and batch size
    queue_depth: int
    jpeg_on_device: bool  # baseline JPEGs are sent undecoded, for the model's device to decode
    hung: bool  # a batch has run past the watchdog bound
    # Where the host serves differently from its configuration, and why (see Fallbacks).
    warnings: tuple[str, ...] = ()
    backend_search: str | None = None  # the background search's progress or outcome


HUNG_MESSAGE = "the model has been running one batch for longer than the watchdog allows"


class ModelClient(Protocol):
    @property
    def ready(self) -> bool:
        """True while infer can succeed (model loaded, batcher running, reachable)."""
        ...

    def status(self) -> ModelStatus:
        """The serving model's status; raises NotReady when there is none."""
        ...

    def admit(self, ahead: int = 0) -> None:
        """Raise QueueFull now if the model would refuse one more image (queue full, or it
        would finish past the latency target): checked before any work is spent on it.
        `ahead`: images this process admitted that have not reached the model yet."""
        ...

    async def check(self) -> None:
        """For /readyz: raise NotReady unless the model can serve now (reachable, and no
        batch stuck past the watchdog bound)."""
        ...

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        """One image's outputs, and whether another process's identical image, in flight at
        the same time, was run for it (`key` names the image: its cache key).

        Raises the batcher's errors (QueueFull, DeadlineExceeded, ...), NotReady, or
        InvalidInput for a JPEG that does not decode on the device."""
        ...

    async def start(self) -> None: ...

    async def connected_if_listening(self) -> None:
        """Wait briefly for a host that listens but is not connected yet (it restarted, or
        a model version was published a moment ago), so a request does not fail for want of a
        connection; returns at once when connected, in-process, or nobody listens."""
        ...

    async def stop(self, drain_timeout_s: float) -> None: ...


def model_status(
    runtime: "ModelRuntime", queue_depth: int, hung: bool, backend_search: str | None = None
) -> ModelStatus:
    return ModelStatus(
        spec=runtime.spec,
        device=runtime.device,
        backend=runtime.backend.name,
        max_batch_size=runtime.largest_batch,
        backend_choice=runtime.choice.reason,
        queue_depth=queue_depth,
        jpeg_on_device=runtime.jpeg_decoder is not None and runtime.jpeg_decoder.working,
        hung=hung,
        warnings=tuple(runtime.fallbacks.warnings),
        backend_search=backend_search,
    )


def outputs_or_raise(outcome: BatchOutcome[ModelResult]) -> BatchOutcome[ModelOutputs]:
    """The outcome of one item; its own decode failure is raised for its request alone."""
    if isinstance(outcome.value, InvalidInput):
        raise outcome.value
    return BatchOutcome(outcome.value, outcome.queued_s, outcome.run_s, outcome.batch_size)


ModelBatcher = Batcher[ModelInput, ModelResult]

# After a remote model host refuses an image, its client refuses new ones itself, before
# decoding them, for the time the host said its backlog needs to drain (at most this long,
# so a stale view never starves a host that has caught up).
_LOCAL_REFUSAL_MAX_S = 0.5


class RecentRefusal:
    """A remote model host's last refusal, for the client's `admit`: the host judges each
    image on arrival, and here only its last refusal counts, only while the client still
    has images there (else it is no evidence of now)."""

    def __init__(self) -> None:
        self._refused: QueueFull | None = None
        self._refusing_until = 0.0
        self._backlog_clears_at = 0.0

    def remember(self, refused: QueueFull) -> None:
        now = time.monotonic()
        self._refused = refused
        self._backlog_clears_at = now + refused.retry_after_s
        self._refusing_until = now + min(refused.retry_after_s, _LOCAL_REFUSAL_MAX_S)

    def check(self, waiting_there: bool) -> None:
        """Raise QueueFull while the last refusal still holds."""
        refused, now = self._refused, time.monotonic()
        if refused is not None and now < self._refusing_until and waiting_there:
            raise QueueFull(refused.depth, self._backlog_clears_at - now, refused.why)


def model_batcher(
    run_batch: Callable[[list[ModelInput]], list[ModelResult]],
    runtime: "ModelRuntime",
    settings: Settings,
    registry: CollectorRegistry,
    largest: int,
    activity: BatchActivity | None = None,
) -> ModelBatcher:
    """The batcher in front of a runtime (`run_batch` runs whichever is live), with its
    metrics on `registry`; `largest`: the biggest batch size a replacement may bring.

    The queue holds at least two batches: a shorter one would refuse work the model could
    take (a GPU's batch of 256 against the default queue of 64). The latency target leaves a
    tenth of itself for what happens outside the batcher (reading, decoding, answering).
    On a CPU the model's threads run `MODEL_NICE` steps nicer than those answering requests.
    The runtime's fallback counts are exported on the same registry.
    """
    runtime.fallbacks.bind(registry)
    return Batcher(
        run_batch,
        max_batch_size=runtime.batch_size,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=max(settings.queue_size, 2 * runtime.batch_size),
        max_latency_s=0.9 * settings.target_latency_ms / 1000,
        hung_after_s=settings.watchdog_s,
        owner_setup=(
            functools.partial(lower_this_threads_priority, settings.model_nice)
            if runtime.device == "cpu"
            else None
        ),
        observer=PrometheusBatchObserver(registry, max(largest, runtime.batch_size)),
        activity=activity,
        name="model",
    )


class InProcessModel:
    """The model host in this process."""

    def __init__(self, host: "ModelHost"):
        self.host = host

    @property
    def ready(self) -> bool:
        batcher = self.host.batcher
        return batcher.running and not batcher.hung

    def status(self) -> ModelStatus:
        if self.host.batcher.hung:
            raise NotReady(HUNG_MESSAGE)
        if not self.ready:
            raise NotReady("the model is not loaded or is shutting down")
        return self.host.status(self.host.batcher.queue_depth, hung=False)

    def admit(self, ahead: int = 0) -> None:
        self.host.batcher.admit(ahead)

    async def check(self) -> None:
        self.status()

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        # One process: the pipeline's own single-flight has already joined identical images.
        outcome = await self.host.batcher.submit(item, timeout_s=timeout_s)
        return outputs_or_raise(outcome), False

    async def start(self) -> None:
        await self.host.start()

    async def connected_if_listening(self) -> None:
        return None  # in this process

    async def stop(self, drain_timeout_s: float) -> None:
        await self.host.stop(drain_timeout_s=drain_timeout_s)

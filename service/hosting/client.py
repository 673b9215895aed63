"""The seam between the pipeline and the model: pixels in, one image's outputs out.

`ModelClient` is what the pipeline and the versions manager hold; `service.hosting.host.
InProcessModel` runs the batcher and backend in this process (tests, the 2-core default),
`service.transport.remote_model.RemoteModel` reaches a model worker process or a Ray Model
replica.
"""

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from batching import BatchOutcome, Priority, QueueFull
from service.errors import InvalidInput
from service.model.model_io import ModelInput, ModelOutputs, ModelResult
from service.model.spec import ModelSpec

if TYPE_CHECKING:  # torch: HTTP workers import this module and never load it
    pass


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
    parameter_bytes: int = 0  # the model's weights in memory (a new version needs a few times)
    # The largest batch run now: below max_batch_size while the latency target needs it.
    batch_limit: int = 0


HUNG_MESSAGE = "the model has been running one batch for longer than the watchdog allows"


class ModelClient(Protocol):
    @property
    def ready(self) -> bool:
        """True while infer can succeed (model loaded, batcher running, reachable)."""
        ...

    def status(self) -> ModelStatus:
        """The serving model's status; raises NotReady when there is none."""
        ...

    @property
    def idle(self) -> bool:
        """True while no image of this client waits at or runs in the model: background
        work (a version's re-embedding) may then take the model at full speed."""
        ...

    def admit(self, ahead: int = 0, priority: Priority = Priority.INTERACTIVE) -> None:
        """Raise QueueFull now if the model would refuse one more image of this class (queue
        full, or it would finish past the latency target): checked before any work is spent
        on it. `ahead`: images this process admitted that have not reached the model yet."""
        ...

    async def check(self) -> None:
        """For /readyz: raise NotReady unless the model can serve now (reachable, and no
        batch stuck past the watchdog bound)."""
        ...

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        """One image's outputs, and whether another process's identical image, in flight at
        the same time, was run for it (`key` names the image: its cache key; `priority` its
        class in the model's queue).

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


def outputs_or_raise(outcome: BatchOutcome[ModelResult]) -> BatchOutcome[ModelOutputs]:
    """The outcome of one item; its own decode failure is raised for its request alone."""
    if isinstance(outcome.value, InvalidInput):
        raise outcome.value
    return BatchOutcome(outcome.value, outcome.queued_s, outcome.run_s, outcome.batch_size)


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

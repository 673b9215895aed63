"""The seam between the pipeline and the model: pixels in, one image's outputs out.

`InProcessModel` runs the batcher and backend in this process (tests, the 2-core default);
`service.workers.remote_model.RemoteModel` sends the pixels to a model worker process.
"""

from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry

from batching import Batcher, BatchOutcome, PrometheusBatchObserver
from service.errors import InvalidInput, NotReady
from service.model.backend import ModelOutputs
from service.model.runtime import ModelInput, ModelResult, ModelRuntime
from service.model.spec import ModelSpec


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


class ModelClient(Protocol):
    @property
    def ready(self) -> bool:
        """True while infer can succeed (model loaded, batcher running, reachable)."""
        ...

    def status(self) -> ModelStatus:
        """The serving model's status; raises NotReady when there is none."""
        ...

    async def infer(self, item: ModelInput, timeout_s: float) -> BatchOutcome[ModelOutputs]:
        """One image's outputs. Raises the batcher's errors (QueueFull, DeadlineExceeded, ...),
        NotReady, or InvalidInput for a JPEG that does not decode on the device."""
        ...

    async def start(self) -> None: ...

    async def stop(self, drain_timeout_s: float) -> None: ...


def model_status(runtime: ModelRuntime, queue_depth: int) -> ModelStatus:
    return ModelStatus(
        spec=runtime.spec,
        device=runtime.device,
        backend=runtime.backend.name,
        max_batch_size=runtime.batch_size,
        backend_choice=runtime.choice.reason,
        queue_depth=queue_depth,
        jpeg_on_device=runtime.jpeg_decoder is not None,
    )


def outputs_or_raise(outcome: BatchOutcome[ModelResult]) -> BatchOutcome[ModelOutputs]:
    """The outcome of one item; its own decode failure is raised for its request alone."""
    if isinstance(outcome.value, InvalidInput):
        raise outcome.value
    return BatchOutcome(outcome.value, outcome.queued_s, outcome.run_s, outcome.batch_size)


ModelBatcher = Batcher[ModelInput, ModelResult]


def model_batcher(
    runtime: ModelRuntime, *, max_wait_s: float, max_queue: int, registry: CollectorRegistry
) -> ModelBatcher:
    """The batcher in front of a runtime, with its metrics on `registry`.

    The queue holds at least two batches: a shorter one would refuse work the model could
    take (a GPU's batch of 256 against the default queue of 64).
    """
    return Batcher(
        runtime.predict_batch,
        max_batch_size=runtime.batch_size,
        max_wait_s=max_wait_s,
        max_queue=max(max_queue, 2 * runtime.batch_size),
        observer=PrometheusBatchObserver(registry, runtime.batch_size),
        name="model",
    )


class InProcessModel:
    """The batcher and backend in this process."""

    def __init__(self, runtime: ModelRuntime, batcher: ModelBatcher):
        self.runtime = runtime
        self._batcher = batcher

    @property
    def ready(self) -> bool:
        return self._batcher.running

    def status(self) -> ModelStatus:
        if not self.ready:
            raise NotReady("the model is not loaded or is shutting down")
        return model_status(self.runtime, self._batcher.queue_depth)

    async def infer(self, item: ModelInput, timeout_s: float) -> BatchOutcome[ModelOutputs]:
        return outputs_or_raise(await self._batcher.submit(item, timeout_s=timeout_s))

    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self, drain_timeout_s: float) -> None:
        await self._batcher.stop(drain_timeout_s=drain_timeout_s)

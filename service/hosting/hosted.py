"""What every host of the model answers, on top of the ModelHost: a model worker process
(service.workers.model_worker) and a Ray Serve replica (service.cluster.deployments) serve
this one class, so both behave the same to their callers."""

from batching import BatchOutcome, Priority
from service import tracing
from service.errors import NotReady
from service.hosting.client import HUNG_MESSAGE, ModelStatus, outputs_or_raise
from service.hosting.host import ModelHost
from service.model.jpeg_upload import JpegUpload
from service.model.model_io import ModelInput, ModelOutputs
from service.single_flight import SingleFlight


class HostedModel:
    """describe and infer (service.transport.operations.HostedModelCalls) for remote callers.

    Identical images from different callers (HTTP workers, ingress replicas) that arrive
    while one of them is in flight are run once, by their cache key; each caller joins its
    own identical requests before they get here."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host
        self._flights: SingleFlight[BatchOutcome[ModelOutputs]] = SingleFlight()

    async def describe(self) -> ModelStatus:
        batcher = self.host.batcher
        return self.host.status(batcher.queue_depth, hung=batcher.hung)

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        batcher = self.host.batcher
        if batcher.hung:  # answered 503 at once, as in one process, not queued behind it
            raise NotReady(HUNG_MESSAGE)
        if isinstance(item, JpegUpload) and self.host.runtime.jpeg_decoder is None:
            raise ValueError("this model host decodes no JPEGs")  # a client bug: 500

        async def run() -> BatchOutcome[ModelOutputs]:
            outcome = await batcher.submit(item, timeout_s=timeout_s, priority=priority)
            tracing.record_batch_timings(outcome.queued_s, outcome.run_s, outcome.batch_size)
            return outputs_or_raise(outcome)

        return await self._flights.run(key, run)

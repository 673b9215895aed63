"""What every host of the model answers, on top of the ModelHost: a model worker process
(service.workers.model_worker) and a Ray Serve replica (service.cluster.deployments) serve
this one class, so both behave the same to their callers."""

import asyncio

from batching import BatchOutcome, Priority
from service import tracing
from service.errors import NotReady
from service.hosting.client import HUNG_MESSAGE, ModelStatus, outputs_or_raise
from service.hosting.hop_batch import HopBatch, HopItem, Outcome
from service.hosting.host import ModelHost
from service.logs import current_request_id
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

    async def infer_many(self, batch: HopBatch) -> list[Outcome]:
        """Each image of one call as `infer` would take it alone (its deadline, priority,
        admission, request id and trace), all at once; per image its answer or its error."""

        async def one(image: ModelInput, item: HopItem) -> tuple[BatchOutcome[ModelOutputs], bool]:
            current_request_id.set(item.request_id)  # this image's own task: its log lines
            with tracing.continued("ray infer", item.carrier, request_id=item.request_id):
                return await self.infer(image, item.timeout_s, item.key, item.priority)

        return await asyncio.gather(
            *(one(image, item) for image, item in zip(batch.inputs(), batch.items, strict=True)),
            return_exceptions=True,
        )

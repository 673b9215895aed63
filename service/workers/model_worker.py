"""The model worker: one process per device that owns the batcher and the backend.

HTTP workers connect over a Unix socket, attach their shared-memory pixel slots, and send
slot numbers; this process batches them and answers each with that image's outputs. It binds
its socket only once the model is loaded and warmed up, so a connection means ready.

Each HTTP worker joins identical requests of its own; identical images that arrive here from
different HTTP workers while one of them is in flight are run once too (by their cache key).
"""

import gc
from pathlib import Path

import numpy as np

from batching import BatchOutcome
from service.errors import NotReady
from service.model.backend import ModelOutputs
from service.model.device_jpeg import JpegUpload
from service.model.runtime import ModelInput
from service.model_client import HUNG_MESSAGE, ModelStatus, outputs_or_raise
from service.model_host import ModelHost
from service.settings import Settings
from service.single_flight import SingleFlight
from service.workers.metrics import worker_registry
from service.workers.operations import (
    InspectorOperations,
    ModelOperations,
    forwarded,
    handler_table,
)
from service.workers.process import run_until_stopped
from service.workers.rpc import Peer, RpcServer
from service.workers.slots import SlotReader


async def serve_model(settings: Settings, socket_path: Path) -> None:
    host = ModelHost(settings, worker_registry())
    await host.load()
    batcher = host.batcher
    flights: SingleFlight[BatchOutcome[ModelOutputs]] = SingleFlight()

    async def run_once(
        key: str, item: ModelInput, timeout_s: float
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        if batcher.hung:  # answered 503 at once, as in one process, not queued behind it
            raise NotReady(HUNG_MESSAGE)

        async def run() -> BatchOutcome[ModelOutputs]:
            return outputs_or_raise(await batcher.submit(item, timeout_s=timeout_s))

        return await flights.run(key, run)

    async def describe(_: Peer) -> ModelStatus:
        return host.status(batcher.queue_depth, hung=batcher.hung)

    async def attach(peer: Peer, path: str, count: int, shape: tuple[int, int, int]) -> None:
        pixel_shape = host.runtime.preprocessor.pixel_shape
        if tuple(shape) != pixel_shape:
            raise ValueError(f"slots of {shape}; this model takes {pixel_shape}")
        reader = SlotReader(Path(path), count, shape)
        peer.state["slots"] = reader
        peer.on_close(reader.close)

    async def infer(
        peer: Peer, slot: int, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        # Copied before anything else: the slot is the sender's again once this call answers,
        # while a flight it started may still run for others.
        pixels: np.ndarray = peer.state["slots"].copy(slot)
        return await run_once(key, pixels, timeout_s)

    async def infer_jpeg(
        _: Peer, upload: JpegUpload, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        if host.runtime.jpeg_decoder is None:
            raise ValueError("this model worker decodes no JPEGs")  # a client bug: 500
        return await run_once(key, upload, timeout_s)

    handlers = handler_table(
        ModelOperations.ALL,
        {
            ModelOperations.describe: describe,
            ModelOperations.attach: attach,
            ModelOperations.infer: infer,
            ModelOperations.infer_jpeg: infer_jpeg,
        },
    ) | forwarded(InspectorOperations.ALL, host.inspector)
    await host.start()
    gc.freeze()  # the model and its runtime live as long as the process (see service.app)
    server = await RpcServer(handlers).start(socket_path)
    try:
        await run_until_stopped(f"model worker on {host.runtime.device}")
    finally:
        server.close()  # no new connections; in-flight calls finish in the drain below
        await host.stop(drain_timeout_s=settings.request_timeout_s)

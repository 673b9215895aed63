"""The model worker: one process per device that owns the batcher and the backend.

HTTP workers connect over a Unix socket, attach their shared-memory pixel slots, and send
slot numbers (or JPEGs for the device to decode); this process batches them and answers
each with that image's outputs. It binds its socket only once the model is loaded and warmed
up, so a connection means ready. What it answers is service.model_serving.HostedModel's, as
a Ray replica's is.
"""

import gc
from pathlib import Path

import numpy as np

from batching import BatchOutcome
from service.model.backend import ModelOutputs
from service.model_host import ModelHost
from service.model_serving import HostedModel
from service.settings import Settings
from service.workers.metrics import worker_registry
from service.workers.operations import (
    HostedModelOperations,
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
    hosted = HostedModel(host)

    async def attach(peer: Peer, path: str, count: int, shape: tuple[int, int, int]) -> None:
        pixel_shape = host.runtime.preprocessor.pixel_shape
        if tuple(shape) != pixel_shape:
            raise ValueError(f"slots of {shape}; this model takes {pixel_shape}")
        reader = SlotReader(Path(path), count, shape)
        peer.state["slots"] = reader
        peer.on_close(reader.close)

    async def infer_slot(
        peer: Peer, slot: int, timeout_s: float, key: str
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        # Copied before anything else: the slot is the sender's again once this call answers,
        # while a flight it started may still run for others.
        pixels: np.ndarray = peer.state["slots"].copy(slot)
        return await hosted.infer(pixels, timeout_s, key)

    handlers = (
        forwarded(HostedModelOperations.ALL, hosted)
        | handler_table(
            (ModelOperations.attach, ModelOperations.infer_slot),
            {ModelOperations.attach: attach, ModelOperations.infer_slot: infer_slot},
        )
        | forwarded(InspectorOperations.ALL, host.inspector)
    )
    await host.start()
    gc.freeze()  # the model and its runtime live as long as the process (see service.app)
    server = await RpcServer(handlers).start(socket_path)
    try:
        await run_until_stopped(f"model worker on {host.runtime.device}")
    finally:
        server.close()  # no new connections; in-flight calls finish in the drain below
        await host.stop(drain_timeout_s=settings.request_timeout_s)

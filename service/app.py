"""create_app(settings): the FastAPI application and its lifespan (no import-time globals)."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.errors import install_error_handlers
from service.http_metrics import HttpMetrics
from service.limits import BodyLimit
from service.model.runtime import load_runtime
from service.pipeline import Pipeline
from service.routes import classify, embed, health
from service.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loading fails fast (ModelLoadError) so a misconfigured server never starts serving.
        runtime = await asyncio.to_thread(load_runtime, settings)
        await asyncio.to_thread(runtime.warm_up, (1, settings.max_batch_size))
        pipeline = Pipeline(runtime, settings, registry)
        await pipeline.start()
        app.state.pipeline = pipeline
        for warning in runtime.spec.warnings:
            log.warning(warning)
        log.info("ready: %s on %s", runtime.spec.model_id, runtime.device)
        try:
            yield
        finally:
            await pipeline.stop()

    app = FastAPI(
        title="resnet-serve",
        version="0.1.0",
        description="Image classification and embeddings with a dynamic batcher.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    install_error_handlers(app)
    for router in (classify.router, embed.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(HttpMetrics, registry=registry)
    return app

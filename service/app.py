"""create_app(settings): the FastAPI application and its lifespan (no import-time globals)."""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector

from service.errors import install_error_handlers
from service.explain.explainer import Explainer
from service.explain.inspector import InProcessInspector, ModelInspector
from service.http_metrics import HttpMetrics
from service.limits import BodyLimit
from service.model.runtime import ModelRuntime, load_runtime
from service.model_client import InProcessModel, ModelClient, model_batcher
from service.pipeline import Pipeline
from service.routes import classify, embed, explain, health, items, search
from service.routes.docs import serve_docs
from service.search_index import ItemIndex, SearchIndex, open_collection_for
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceParts:
    """What the routes use: the model, the similarity index, and the model inspector."""

    model: ModelClient
    index: ItemIndex
    inspector: ModelInspector


# Where the parts live: this process (the default), or worker processes.
Components = Callable[[Settings, CollectorRegistry], AbstractAsyncContextManager[ServiceParts]]


def inspector_for(
    runtime: ModelRuntime, settings: Settings, registry: CollectorRegistry
) -> InProcessInspector:
    """The fp32 inspection path beside a serving runtime, with its own admission limit."""
    return InProcessInspector(
        Explainer(runtime.module, runtime.spec, replicas=settings.explain_concurrency),
        backend=runtime.backend.name,
        precision=runtime.choice.candidate.precision,
        device=runtime.device,
        concurrency=settings.explain_concurrency,
        queue=settings.explain_queue,
        registry=registry,
    )


@asynccontextmanager
async def in_process(
    settings: Settings, registry: CollectorRegistry
) -> AsyncIterator[ServiceParts]:
    """Load the model, warm it up and open the index, all in this process."""
    # Loading fails fast (ModelLoadError) so a misconfigured server never starts serving.
    runtime = await asyncio.to_thread(load_runtime, settings)
    await asyncio.to_thread(runtime.warm_up)
    # A model change refuses to open an index of other vectors (ModelMismatch): fail fast.
    collection = await asyncio.to_thread(open_collection_for, settings, runtime.spec)
    index = SearchIndex(collection, search_threads=settings.decode_threads)
    batcher = model_batcher(
        runtime,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.queue_size,
        registry=registry,
    )
    for warning in runtime.spec.warnings:
        log.warning(warning)
    log.info("ready: %s on %s", runtime.spec.model_id, runtime.device)
    inspector = inspector_for(runtime, settings, registry)
    try:
        yield ServiceParts(InProcessModel(runtime, batcher), index, inspector)
    finally:
        inspector.close()
        await index.close()


def create_app(
    settings: Settings,
    components: Components = in_process,
    registry: CollectorRegistry | None = None,
    exposition: CollectorRegistry | None = None,
) -> FastAPI:
    """The app; metrics are created on `registry` and /metrics serves `exposition` (the same
    registry unless worker processes aggregate theirs)."""
    if registry is None:
        registry = CollectorRegistry()
        # Process CPU, memory and file descriptors, as the default registry would have them.
        ProcessCollector(registry=registry)
    metrics_registry = registry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with components(settings, metrics_registry) as parts:
            pipeline = Pipeline(parts.model, settings, metrics_registry)
            await pipeline.start()
            app.state.pipeline = pipeline
            app.state.index = parts.index
            app.state.inspector = parts.inspector
            try:
                yield
            finally:
                await pipeline.stop()

    app = FastAPI(
        title="resnet-serve",
        version="0.1.0",
        description="Image classification, embeddings and similarity search, dynamically batched.",
        lifespan=lifespan,
        docs_url=None,  # served from shipped files below, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.exposition = exposition or registry
    install_error_handlers(app)
    routers = (classify, embed, search, items, explain, health)
    for router in (module.router for module in routers):
        app.include_router(router)
    serve_docs(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(HttpMetrics, registry=registry)
    if settings.ui:
        from service.ui.app import mount_ui  # Gradio is imported only when the page is on

        app = mount_ui(app)
    return app

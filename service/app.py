"""create_app(settings): the FastAPI application and its lifespan (no import-time globals)."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry, ProcessCollector
from starlette.routing import BaseRoute

from service import extras, tracing
from service.errors import Unavailable, install_error_handlers
from service.explain.inspection import ModelInspector
from service.heads.attached import AttachedHeads
from service.hosting.client import ModelClient
from service.http.access import ApiKeyGuard
from service.http.admission import AdmitAtTheDoor, model_routes
from service.http.http_metrics import HttpMetrics
from service.http.limits import BodyLimit
from service.http.request_id import RequestId
from service.items.index_metrics import IndexMetrics
from service.items.search_index import ItemIndex, SearchIndex, open_collection_for
from service.oip import rest
from service.oip.front import InferenceFront
from service.pipeline import Pipeline
from service.routes import (
    classify,
    embed,
    explain,
    heads,
    health,
    items,
    items_batch,
    models,
    search,
)
from service.routes.docs import serve_docs
from service.settings import Settings
from service.versions.manager import ModelVersions
from service.versions.registry import DEFAULT
from service.versions.serving import Serving, Versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceParts:
    """What the routes use: the model, the similarity index, and the model inspector."""

    model: ModelClient
    index: ItemIndex
    inspector: ModelInspector


# Where a model version's parts live: this process (the default), worker processes, or Ray
# deployments. They are given the version's name and its settings.
Components = Callable[[str, Settings, CollectorRegistry], AbstractAsyncContextManager[ServiceParts]]

# How the app reaches its model versions: it manages them itself (one process), or sees those
# the first model worker manages (an HTTP worker). Given the settings, the version it started
# with, where versions' parts live, and what to call when the live version changes.
VersionHosting = Callable[[Settings, Serving, Components, Callable[[Serving], None]], Versions]


@asynccontextmanager
async def in_process(
    name: str, settings: Settings, registry: CollectorRegistry
) -> AsyncIterator[ServiceParts]:
    """Host the model and open the index, all in this process."""
    # torch is imported where the model runs: HTTP workers import this module without it.
    from service.hosting.host import InProcessModel, ModelHost

    host = ModelHost(settings, registry, name)
    # Loading fails fast (ModelLoadError) so a misconfigured server never starts serving.
    await host.load()
    # A model change refuses to open an index of other vectors (ModelMismatch): fail fast.
    collection = await asyncio.to_thread(open_collection_for, settings, host.runtime.spec)
    index = SearchIndex(collection, search_threads=settings.decode_threads)
    try:
        yield ServiceParts(InProcessModel(host), index, host.inspector)
    finally:
        await index.close()


ROUTERS = tuple(
    module.router
    for module in (
        *(classify, embed, search, items, items_batch, explain, models, heads, health, rest),
    )
)


def api_routes() -> list[BaseRoute]:
    """Every route of the API, with its full path (FastAPI keeps included routers whole)."""
    return [route for router in ROUTERS for route in router.routes]


def create_app(
    settings: Settings,
    components: Components = in_process,
    registry: CollectorRegistry | None = None,
    exposition: CollectorRegistry | None = None,
    versions: VersionHosting | None = ModelVersions,
) -> FastAPI:
    """The app; metrics are created on `registry` and /metrics serves `exposition` (the same
    registry unless worker processes aggregate theirs). `versions=None`: only the default
    model version is served (Ray)."""
    tracing.configure("http")
    if registry is None:
        registry = CollectorRegistry()
        # Process CPU, memory and file descriptors, as the default registry would have them.
        ProcessCollector(registry=registry)
    metrics_registry = registry

    def switch(serving: Serving) -> None:
        """What the routes use from now on (a request resolves it once, at its start)."""
        app.state.serving = serving
        app.state.pipeline = serving.pipeline
        app.state.index = serving.index
        app.state.inspector = serving.inspector

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live, live_settings = ModelVersions.live_settings(settings)
        if versions is None and live != DEFAULT:
            log.warning(
                "model version %s is live in %s, but versions are not hosted here (Ray): "
                "serving the default version (the service's own settings)",
                live,
                settings.data_dir / "versions.json",
            )
            live, live_settings = DEFAULT, settings
        async with components(live, live_settings, metrics_registry) as parts:
            pipeline = Pipeline(parts.model, live_settings, metrics_registry)
            await pipeline.start()
            # Everything loaded so far lives as long as the process: out of the collector's
            # sight, a full collection no longer walks it and stalls every request in flight.
            gc.freeze()
            first = Serving(live, pipeline, parts.index, parts.inspector, metrics=metrics_registry)
            switch(first)
            hosted = None if versions is None else versions(settings, first, components, switch)
            app.state.versions = hosted
            if hosted is not None:
                hosted.start()
            grpc_face = await _start_grpc(app.state.oip, settings)
            try:
                yield
            finally:
                if grpc_face is not None:
                    await grpc_face.stop(grace=settings.request_timeout_s)
                if hosted is not None:
                    await hosted.close()
                await pipeline.stop()
                tracing.shutdown()  # what is buffered goes out before the process ends

    app = FastAPI(
        title="resnet-serve",
        version="0.1.0",
        description="Image classification, embeddings and similarity search, dynamically batched.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry server span, the root of a request's trace when tracing
        # is on (service.tracing configures the provider); metrics stay Prometheus's.
        telemetry={
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "exclude": tracing.untraced,
        },
        docs_url=None,  # served from shipped files below, not a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.exposition = exposition or registry
    app.state.oip = InferenceFront(app.state, settings)
    app.state.index_metrics = IndexMetrics(registry)
    app.state.heads = AttachedHeads(settings.data_dir, settings.head_sources)
    routes = api_routes()
    install_error_handlers(app, routes)
    for router in ROUTERS:
        app.include_router(router)
    serve_docs(app)
    # Starlette runs the last added first: ids, metrics (and X-Model-Version), CORS, the key,
    # admission, body limit.
    app.add_middleware(BodyLimit, routes=routes, settings=settings)
    app.add_middleware(
        AdmitAtTheDoor,
        routes=model_routes(routes),
        client_max_in_flight=settings.client_max_in_flight,
    )
    if settings.api_key is not None:
        app.add_middleware(
            ApiKeyGuard, key=settings.api_key.get_secret_value(), scope=settings.api_key_scope
        )
    if settings.cors_origin_list:  # closed unless configured: no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=[
                *("X-Request-ID", "X-Cache", "X-Model-Version", "Retry-After", "X-Priority"),
                *("X-Queue-Time", "X-Inference-Time", "X-Total-Time"),
            ],
        )
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_middleware(RequestId)
    if settings.ui and not extras.installed("ui"):  # asked for explicitly, Settings refuses
        log.warning("%s: off", PAGE_MISSING)
        app.add_api_route("/ui", _page_missing, include_in_schema=False)
        app.add_api_route("/ui/{rest:path}", _page_missing, include_in_schema=False)
    elif settings.ui:
        from service.ui.app import mount_ui  # Gradio is imported only when the page is on

        key = settings.api_key
        app = mount_ui(app, None if key is None else key.get_secret_value())
    return app


async def _start_grpc(front: InferenceFront, settings: Settings) -> Any:
    """The inference protocol's gRPC face, when it is on and its extra is here (a port asked
    for explicitly without the extra is refused by Settings; the default does without)."""
    if settings.grpc_port == 0:
        return None
    if not extras.installed("grpc"):
        log.warning("%s: off", extras.missing("grpc", "the inference protocol over gRPC"))
        return None
    from service.oip.grpc_face import start_grpc  # grpcio only where the face is on

    return await start_grpc(front, settings)


PAGE_MISSING = extras.missing("ui", "the web page at /ui")


async def _page_missing() -> None:
    raise Unavailable(PAGE_MISSING)

"""GET /healthz, /readyz and /metrics."""

import contextlib
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from index.milvus_collection import MilvusUnavailable
from service import resources
from service.errors import NotReady
from service.http.schemas import DetectedResources, ReadyResponse
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.routes.deps import ERROR_RESPONSES, get_index, get_pipeline, model_info

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers HTTP."""
    return {"status": "alive"}


@router.get("/readyz", response_model=ReadyResponse, responses={503: ERROR_RESPONSES[503]})
async def readyz(
    pipeline: Annotated[Pipeline, Depends(get_pipeline)],
    _: Annotated[ItemIndex, Depends(get_index)],
) -> ReadyResponse:
    """Ready: model loaded and warmed up, no batch hung, similarity index open."""
    status = await pipeline.checked_status()
    spec = status.spec
    info = model_info(spec)
    info["warnings"] += status.warnings  # what the model host does differently, and why
    return ReadyResponse(
        **info,
        status="ready",
        device=status.device,
        backend=status.backend,
        fingerprint=spec.fingerprint,
        embedding_dim=spec.embedding_dim,
        max_batch_size=status.max_batch_size,
        batch_limit=status.batch_limit or status.max_batch_size,
        backend_choice=status.backend_choice,
        backend_search=status.backend_search,
        queue_depth=status.queue_depth,
        resources=DetectedResources(**resources.detect().describe()),  # type: ignore[arg-type]
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    state = request.app.state
    serving = getattr(state, "serving", None)
    if serving is not None:
        with contextlib.suppress(NotReady, MilvusUnavailable):  # the gauge keeps its last
            state.index_metrics.items(serving.name, await serving.index.count())
    registry: CollectorRegistry = state.exposition
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

"""POST /v1/search (image query) and POST /v1/similarity (two images)."""

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from index.filters import Filter
from service.http.admission import USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.limits import body_limit
from service.http.schemas import SearchResponse, SimilarityResponse
from service.http.uploads import ImageField, read_images
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.routes.deps import (
    ERROR_RESPONSES,
    SINGLE_IMAGE_BODY,
    answer_headers,
    get_settings,
    metadata_filter,
    model_info,
    pinned_index,
    pinned_pipeline,
)
from service.routes.items import search_results
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["index"])
PAIR = (ImageField("a", "a"), ImageField("b", "b"))


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_IMAGE_BODY | USES_MODEL,
)
async def search(
    request: Request,
    response: Response,
    index: Annotated[ItemIndex, Depends(pinned_index)],
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
    where: Annotated[Filter | None, Depends(metadata_filter)],
    k: Annotated[int, Query(ge=1, le=1000, description="how many results")] = 10,
) -> SearchResponse:
    """Items most similar to an image (cosine similarity of embeddings), optionally only
    those whose metadata match `filter`."""
    (data,) = (await read_images(request, settings)).images
    inference = await unless_disconnected(request, pipeline.run(data))
    started = time.perf_counter()
    hits = await index.search(inference.outputs.embedding, k, where)
    request.app.state.index_metrics.searched(request.state, "search", time.perf_counter() - started)
    answer_headers(response, inference)
    return SearchResponse(
        **model_info(pipeline.status().spec),
        results=search_results(hits),
        cache=inference.cache,
        timings_ms=inference.timings_ms
        | {"search": round(1000 * (time.perf_counter() - started), 2)},
    )


@router.post(
    "/similarity",
    response_model=SimilarityResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=USES_MODEL | body_limit("two_images"),
)
async def similarity(
    request: Request,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> SimilarityResponse:
    """Cosine similarity of two images: multipart files `a` and `b`, or JSON base64 `a`, `b`."""
    started = time.perf_counter()
    first, second = (await read_images(request, settings, PAIR)).images
    a, b = await unless_disconnected(
        request, asyncio.gather(pipeline.run(first), pipeline.run(second))
    )
    return SimilarityResponse(
        **model_info(pipeline.status().spec),
        score=float(a.outputs.embedding @ b.outputs.embedding),
        timings_ms={"total": round(1000 * (time.perf_counter() - started), 2)},
    )

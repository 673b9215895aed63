"""Items of the similarity index: PUT, GET, DELETE /v1/items/{id}, GET .../similar, /v1/index."""

import io
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from PIL import Image

from index.collection import SearchHit
from index.filters import Filter
from index.store import StoredItem
from service.errors import InvalidInput, NotFound
from service.http.admission import USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.schemas import IndexResponse, ItemResponse, SearchResponse, SearchResult
from service.http.uploads import read_images
from service.items.item_ids import MAX_ID_LENGTH, validate_item_id
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.routes.deps import (
    ITEM_ERROR_RESPONSES,
    SINGLE_IMAGE_BODY,
    get_index,
    get_pipeline,
    get_settings,
    metadata_filter,
    model_info,
    pinned_index,
    pinned_pipeline,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["index"])

ItemId = Annotated[str, Path(description=f"1..{MAX_ID_LENGTH} characters; '/' allowed")]
K = Annotated[int, Query(ge=1, le=1000, description="how many results")]


@router.get(
    "/items/{item_id:path}/similar",
    response_model=SearchResponse,
    responses=ITEM_ERROR_RESPONSES,
    operation_id="similar_items",
)
async def similar_items(
    request: Request,
    item_id: ItemId,
    index: Annotated[ItemIndex, Depends(pinned_index)],
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    where: Annotated[Filter | None, Depends(metadata_filter)],
    k: K = 10,
) -> SearchResponse:
    """Items nearest to a stored item's vector, the item itself left out (and only those
    whose metadata match `filter`, when given)."""
    started = time.perf_counter()
    hits = await index.similar(validate_item_id(item_id), k, where)
    request.app.state.index_metrics.searched(
        request.state, "similar", time.perf_counter() - started
    )
    if hits is None:
        raise NotFound(f"no item {item_id!r}")
    return SearchResponse(
        **model_info(pipeline.status().spec),
        results=search_results(hits),
        timings_ms={"search": round(1000 * (time.perf_counter() - started), 2)},
    )


@router.get(
    "/items/{item_id:path}/image",
    operation_id="item_image",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}, "description": "the stored image"},
        **ITEM_ERROR_RESPONSES,
    },
)
async def item_image(item_id: ItemId, index: Annotated[ItemIndex, Depends(get_index)]) -> Response:
    """The image stored with an item (404 if unknown or stored without it)."""
    data = await index.image(validate_item_id(item_id))
    if data is None:
        raise NotFound(f"no stored image for item {item_id!r}")
    return Response(data, media_type=image_media_type(data))


# What a client (and schemathesis's stateful phase) can do with an item it has just put.
ITEM_LINKS = {
    name: {"operationId": operation, "parameters": {"item_id": "$request.path.item_id"}}
    for name, operation in {
        "GetItem": "get_item",
        "SimilarItems": "similar_items",
        "ItemImage": "item_image",
        "DeleteItem": "delete_item",
    }.items()
}


@router.put(
    "/items/{item_id:item_id}",
    operation_id="put_item",
    status_code=201,
    response_model=ItemResponse,
    responses={
        **ITEM_ERROR_RESPONSES,
        201: {
            "description": "added; Location is the item",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "links": ITEM_LINKS,
        },
        200: {"model": ItemResponse, "description": "replaced", "links": ITEM_LINKS},
    },
    openapi_extra=SINGLE_IMAGE_BODY | USES_MODEL,
)
async def put_item(
    item_id: ItemId,
    request: Request,
    response: Response,
    index: Annotated[ItemIndex, Depends(get_index)],
    pipeline: Annotated[Pipeline, Depends(get_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> ItemResponse:
    """Add or replace an item: an image (`file`) and optional `metadata` (a JSON object).

    Answered once the item is durable: 201 when new, 200 when it replaced one.
    """
    validate_item_id(item_id)
    form = await read_images(request, settings)
    metadata = parse_metadata(form.metadata, settings.max_metadata_bytes)
    (data,) = form.images
    inference = await unless_disconnected(request, pipeline.run(data))
    image = data if settings.index_keep_images else None
    created = await index.put(item_id, inference.outputs.embedding, metadata, image)
    response.status_code = 201 if created else 200
    if created:
        response.headers["Location"] = f"/v1/items/{item_id}"
    stored = await index.get(item_id)
    if stored is None:  # deleted by another request in between
        raise NotFound(f"item {item_id!r} was deleted while it was being added")
    return item_response(stored, created)


@router.get(
    "/items/{item_id:item_id}",
    operation_id="get_item",
    response_model=ItemResponse,
    responses=ITEM_ERROR_RESPONSES,
)
async def get_item(
    item_id: ItemId, index: Annotated[ItemIndex, Depends(get_index)]
) -> ItemResponse:
    """An item's metadata and when it was added."""
    stored = await index.get(validate_item_id(item_id))
    if stored is None:
        raise NotFound(f"no item {item_id!r}")
    return item_response(stored)


@router.delete(
    "/items/{item_id:item_id}",
    operation_id="delete_item",
    status_code=204,
    responses=ITEM_ERROR_RESPONSES,
)
async def delete_item(item_id: ItemId, index: Annotated[ItemIndex, Depends(get_index)]) -> Response:
    """Remove an item; answered once the removal is durable."""
    if not await index.delete(validate_item_id(item_id)):
        raise NotFound(f"no item {item_id!r}")
    return Response(status_code=204)


@router.get("/index", response_model=IndexResponse)
async def index_info(index: Annotated[ItemIndex, Depends(get_index)]) -> IndexResponse:
    """Size, dimension, index kind and the model fingerprint of the stored vectors."""
    stats = await index.stats()
    return IndexResponse(
        count=stats.count,
        dimension=stats.d,
        kind=stats.kind,
        factory=stats.factory,
        reason=stats.reason,
        nprobe=stats.nprobe,
        tombstones=stats.tombstones,
        pending=stats.changes_since_snapshot,
        building=stats.building,
        last_build_error=stats.last_build_error,
        model=stats.model,
        fingerprint=stats.fingerprint,
        index_bytes_per_item=stats.index_bytes_per_item,
        store_vector_bytes=stats.store_vector_bytes,
        filtered=stats.filtered,
        filtered_exact_up_to=stats.filtered_exact_up_to,
    )


def image_media_type(data: bytes) -> str:
    """The stored bytes' type, read from their header (they were decoded once on the way in)."""
    try:
        kind = Image.open(io.BytesIO(data)).format
    except (OSError, ValueError):
        return "application/octet-stream"
    return Image.MIME.get(kind or "", "application/octet-stream")


def parse_metadata(text: str | None, limit: int) -> dict[str, Any]:
    if text is None:
        return {}
    size = len(text.encode())
    if size > limit:
        raise InvalidInput(f"metadata is {size} bytes; the limit is {limit} bytes")
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise InvalidInput(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    return value


def item_response(stored: StoredItem, created: bool | None = None) -> ItemResponse:
    added_at = datetime.fromtimestamp(stored.added_at, UTC)
    return ItemResponse(id=stored.id, metadata=stored.metadata, added_at=added_at, created=created)


def search_results(hits: list[SearchHit]) -> list[SearchResult]:
    return [SearchResult(id=hit.id, score=hit.score, metadata=hit.metadata) for hit in hits]

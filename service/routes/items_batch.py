"""POST /v1/items/batch: many items in one request, answered item by item."""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from service.errors import INTERNAL, InvalidInput, describe_error
from service.http.admission import BULK_WORK, USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.limits import body_limit
from service.http.schemas import BatchPutItem, BatchPutResponse, ErrorDetail
from service.http.uploads import Upload, read_batch_form
from service.items.item_ids import validate_item_id
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.routes.deps import (
    ERROR_RESPONSES,
    get_index,
    get_pipeline,
    get_settings,
    model_info,
    request_body,
)
from service.routes.items import parse_metadata
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["index"])

BATCH_BODY = request_body(
    {
        "multipart/form-data": {
            "files": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "the images, in the order of `items`",
            },
            "items": {
                "type": "string",
                "description": 'JSON list, one entry a file: {"id": ..., "metadata": {...}} '
                "(metadata optional)",
            },
        }
    }
)


@dataclass(frozen=True)
class _Entry:
    id: str
    metadata: dict[str, Any]


@router.post(
    "/items/batch",
    operation_id="put_items",
    response_model=BatchPutResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=BATCH_BODY | USES_MODEL | BULK_WORK | body_limit("batch"),
)
async def put_items(
    request: Request,
    index: Annotated[ItemIndex, Depends(get_index)],
    pipeline: Annotated[Pipeline, Depends(get_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> BatchPutResponse:
    """Add or replace many items: multipart `files` (images) and `items` (a JSON list of
    {"id", "metadata"}, one entry a file, in the same order).

    The images are embedded together by the dynamic batcher. Each item is answered once it
    is durable; a bad image or entry fails only its own result."""
    started = time.perf_counter()
    uploads, manifest = await read_batch_form(request, settings, "items")
    entries = _entries(manifest, len(uploads), settings)

    async def put(upload: Upload, entry: _Entry | InvalidInput) -> bool:
        if isinstance(entry, InvalidInput):
            raise entry
        inference = await pipeline.run(upload.data)
        image = upload.data if settings.index_keep_images else None
        return await index.put(entry.id, inference.outputs.embedding, entry.metadata, image)

    outcomes = await unless_disconnected(
        request,
        asyncio.gather(
            *(put(u, e) for u, e in zip(uploads, entries, strict=True)), return_exceptions=True
        ),
    )
    results = [
        _result(position, entry, outcome)
        for position, (entry, outcome) in enumerate(zip(entries, outcomes, strict=True))
    ]
    return BatchPutResponse(
        **model_info(pipeline.status().spec),
        results=results,
        added=sum(result.created is True for result in results),
        replaced=sum(result.created is False for result in results),
        failed=sum(result.error is not None for result in results),
        timings_ms={"total": round(1000 * (time.perf_counter() - started), 2)},
    )


def _entries(manifest: str | None, files: int, settings: Settings) -> list[_Entry | InvalidInput]:
    """One entry a file; an entry that is wrong becomes its item's error, not the request's."""
    if manifest is None:
        raise InvalidInput(
            'multipart field \'items\' (a JSON list of {"id", "metadata"}) is required'
        )
    try:
        listed = json.loads(manifest)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise InvalidInput(f"items is not valid JSON: {exc}") from exc
    if not isinstance(listed, list) or len(listed) != files:
        raise InvalidInput(f"items must be a JSON list with one entry per file ({files})")
    entries: list[_Entry | InvalidInput] = []
    seen: set[str] = set()
    for position, entry in enumerate(listed):
        try:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise InvalidInput(f'items[{position}] must be an object with a string "id"')
            item_id = validate_item_id(entry["id"])
            if item_id in seen:
                raise InvalidInput(f"items[{position}]: id {item_id!r} is listed twice")
            seen.add(item_id)
            metadata = entry.get("metadata", {})
            if not isinstance(metadata, dict):
                raise InvalidInput(f"items[{position}].metadata must be a JSON object")
            text = json.dumps(metadata)
            entries.append(_Entry(item_id, parse_metadata(text, settings.max_metadata_bytes)))
        except InvalidInput as exc:
            entries.append(exc)
    return entries


def _result(position: int, entry: _Entry | InvalidInput, outcome: object) -> BatchPutItem:
    item_id = entry.id if isinstance(entry, _Entry) else None
    if isinstance(outcome, bool):
        return BatchPutItem(index=position, id=item_id, created=outcome)
    if not isinstance(outcome, Exception):
        raise outcome  # type: ignore[misc]  # a BaseException: cancellation, exit
    _, code, message = describe_error(outcome)
    if code == INTERNAL:
        raise outcome  # a bug, not a bad item: the handler answers 500 for the whole request
    return BatchPutItem(index=position, id=item_id, error=ErrorDetail(code=code, message=message))

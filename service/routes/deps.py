"""Shared route dependencies and OpenAPI fragments.

Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a thread pool,
which cost a quarter of a cache hit's CPU time in profiles.
"""

from typing import Annotated, Any, TypedDict

from fastapi import Query, Request, Response

from index.filters import Filter, InvalidFilter, parse_filter
from service.errors import InvalidInput, NotReady
from service.explain.inspection import ModelInspector
from service.http.limits import body_limit
from service.http.schemas import ErrorResponse
from service.items.search_index import ItemIndex
from service.model.spec import ModelSpec
from service.pipeline import Inference, Pipeline
from service.settings import Settings
from service.versions.serving import Serving, Versions


def _serving(request: Request, version: str | None) -> Serving:
    """The version this request is served by, resolved once for the whole request (so its
    query vector and the index it searches come from one model)."""
    resolved: Serving | None = getattr(request.state, "serving", None)
    if resolved is None:
        resolved = serving_of(request.app.state, version)
        request.state.serving = resolved
    return resolved


def serving_of(state: Any, version: str | None) -> Serving:
    """The version `version` (None: the live one) of the app whose state this is."""
    versions: Versions | None = getattr(state, "versions", None)
    if versions is not None:
        return versions.serving(version)
    if version is not None:
        raise NotReady("model versions are not available here")
    resolved: Serving | None = getattr(state, "serving", None)
    if resolved is None:
        raise NotReady("the model is not loaded yet")
    return resolved


VersionQuery = Annotated[
    str | None,
    Query(
        description="the model version to answer with (GET /v1/models); default: the live one",
        examples=["v2"],
    ),
]


async def checked(pipeline: Pipeline) -> Pipeline:
    """The pipeline, once it can take a request; NotReady saying why otherwise."""
    if not pipeline.ready:
        # A host that restarted, or a version made live a moment after it was published:
        # connect now rather than answer 503.
        await pipeline.model.connected_if_listening()
    if not pipeline.ready:
        pipeline.status()  # raises NotReady saying why: hung, restarting, shutting down
        raise NotReady("the model is not loaded or is shutting down")
    return pipeline


async def get_pipeline(request: Request) -> Pipeline:
    """The live version's pipeline (writes, health)."""
    return await checked(_serving(request, None).pipeline)


async def pinned_pipeline(request: Request, version: VersionQuery = None) -> Pipeline:
    """The pipeline of `version=NAME`, or of the live version."""
    return await checked(_serving(request, version).pipeline)


async def pinned_index(request: Request, version: VersionQuery = None) -> ItemIndex:
    return await _open(_serving(request, version).index)


async def pinned_inspector(request: Request, version: VersionQuery = None) -> ModelInspector:
    return _serving(request, version).inspector


class ModelInfoFields(TypedDict):
    model: str
    weights: str
    warnings: list[str]


def model_info(spec: ModelSpec) -> ModelInfoFields:
    """The fields every model response carries, warnings included."""
    return {"model": spec.model_id, "weights": spec.weights, "warnings": list(spec.warnings)}


async def _open(index: ItemIndex) -> ItemIndex:
    if not index.ready:
        await index.connected_if_listening()
    if not index.ready:
        raise NotReady("the similarity index is not open (starting or restarting)")
    return index


async def get_index(request: Request) -> ItemIndex:
    """The live version's index: item writes always go there (other versions follow it)."""
    return await _open(_serving(request, None).index)


MAX_FILTER_BYTES = 8192


async def metadata_filter(
    filter: Annotated[  # the query parameter's public name
        str | None,
        Query(
            description=(
                "only items whose metadata match: a JSON object over top-level metadata keys; "
                "a value means equality, a list means one of them, keys combine with AND. "
                "A key no item has matches nothing."
            ),
            examples=['{"owner": "ann"}', '{"owner": ["ann", "bob"], "kind": "cat"}'],
        ),
    ] = None,
) -> Filter | None:
    if filter is not None and len(filter.encode()) > MAX_FILTER_BYTES:
        raise InvalidInput(f"filter is {len(filter.encode())} bytes; at most {MAX_FILTER_BYTES}")
    try:
        return parse_filter(filter)
    except InvalidFilter as exc:
        raise InvalidInput(str(exc)) from exc


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed request (the HTTP envelope, not the image)",
        401: "API key missing or wrong (only with RESNET_SERVE_API_KEY)",
        413: "upload over the byte or pixel limit",
        415: "not multipart/form-data or JSON, or a non-image part",
        422: "empty, corrupt or non-image upload; bad parameter",
        429: "overloaded (queue full, or past the latency target); see Retry-After",
        503: "not ready, or unavailable here (an optional package, the device's memory)",
        504: "deadline passed",
    }.items()
}

ITEM_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = ERROR_RESPONSES | {
    404: {"model": ErrorResponse, "description": "no such item"}
}


def request_body(content: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A required request body, {media type: {field: schema}}, every field required (the
    routes read their bodies themselves, so FastAPI cannot describe them)."""
    schemas = {
        media: {"schema": {"type": "object", "properties": fields, "required": list(fields)}}
        for media, fields in content.items()
    }
    return {"requestBody": {"required": True, "content": schemas}}


SINGLE_IMAGE_BODY = request_body(
    {
        "multipart/form-data": {"file": {"type": "string", "format": "binary"}},
        "application/json": {"image": {"type": "string", "description": "base64 bytes"}},
    }
) | body_limit("image")


def answer_headers(response: Response, inference: Inference) -> None:
    """How this request's answer came about, as headers (as Text Embeddings Inference sends
    them): `X-Cache`, and the milliseconds of its queue wait, forward pass and whole time in
    the service (`X-Queue-Time`, `X-Inference-Time`, `X-Total-Time`; a cache hit has no
    queue or inference time)."""
    response.headers["X-Cache"] = inference.cache
    timings = inference.timings_ms
    for header, part in (
        ("X-Queue-Time", "queue"),
        ("X-Inference-Time", "inference"),
        ("X-Total-Time", "total"),
    ):
        if part in timings:
            response.headers[header] = f"{timings[part]:.2f}"

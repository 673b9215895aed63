"""Inside the model: POST /v1/explain, POST /v1/features, GET /v1/model/kernels, GET /v1/model."""

import asyncio
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from service.errors import InvalidInput
from service.explain import render
from service.explain.inspection import CamMethod, ModelInspector
from service.http.disconnect import unless_disconnected
from service.http.schemas import ExplainResponse, FeaturesResponse, ModelCardResponse
from service.http.uploads import read_images
from service.pipeline import Pipeline
from service.routes.deps import (
    ERROR_RESPONSES,
    SINGLE_IMAGE_BODY,
    get_settings,
    model_info,
    pinned_inspector,
    pinned_pipeline,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["explain"])

Format = Annotated[
    Literal["png", "json"], Query(description="png: a picture to look at; json: the numbers")
]
PNG = {"content": {"image/png": {}}, "description": "png: the picture (format=json: JSON)"}
HEATMAP_GRID = 14  # the JSON heatmap: a small grid a program can read


@router.post(
    "/explain",
    response_model=ExplainResponse,
    responses={200: PNG, **ERROR_RESPONSES},
    openapi_extra=SINGLE_IMAGE_BODY,
)
async def explain(
    request: Request,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    inspector: Annotated[ModelInspector, Depends(pinned_inspector)],
    settings: Annotated[Settings, Depends(get_settings)],
    class_id: Annotated[int | None, Query(ge=0, description="default: the top-1 class")] = None,
    method: CamMethod = "gradcam",
    layer: Annotated[
        str | None, Query(max_length=64, description="stage number, C<n> or module; default: last")
    ] = None,
    format: Format = "png",
) -> Response:
    """Class activation map (grad-cam): where the model looks for a class."""
    (data,) = (await read_images(request, settings)).images
    spec = pipeline.status().spec
    if class_id is not None and class_id >= spec.num_classes:
        raise InvalidInput(f"class_id must be 0..{spec.num_classes - 1}")

    async def compute() -> bytes:
        image, pixels = await pipeline.decode_for_inspection(data)
        cam = await inspector.cam(pixels, class_id, method, layer)
        if format == "png":
            return await asyncio.to_thread(
                render.heatmap_overlay, image, cam.heatmap, pipeline.preprocessor()
            )
        grid = render.downsample(cam.heatmap, HEATMAP_GRID)
        return (
            ExplainResponse(
                **model_info(spec),
                class_id=cam.class_id,
                label=spec.labels[cam.class_id],
                score=cam.score,
                method=cam.method,
                layer=f"C{cam.stage.number}",
                module=cam.stage.module,
                heatmap=np.round(grid, 4).tolist(),
                region=render.crop_box(image.width, image.height, pipeline.preprocessor()),
            )
            .model_dump_json()
            .encode()
        )

    params = f"explain:{method}:{layer}:{class_id}:{format}"
    body, cache = await unless_disconnected(request, pipeline.cached_body(data, params, compute))
    return _answer(body, format, cache)


@router.post(
    "/features",
    response_model=FeaturesResponse,
    responses={200: PNG, **ERROR_RESPONSES},
    openapi_extra=SINGLE_IMAGE_BODY,
)
async def features(
    request: Request,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    inspector: Annotated[ModelInspector, Depends(pinned_inspector)],
    settings: Annotated[Settings, Depends(get_settings)],
    stage: Annotated[int, Query(ge=1, le=16, description="C1..C5: 1 is the first stage")] = 5,
    channels: Annotated[int, Query(ge=1, le=256, description="most active channels shown")] = 16,
    format: Format = "png",
) -> Response:
    """A stage's activations: the most active channels as a picture grid, or channel means."""
    (data,) = (await read_images(request, settings)).images
    spec = pipeline.status().spec

    async def compute() -> bytes:
        _, pixels = await pipeline.decode_for_inspection(data)
        maps = await inspector.features(pixels, stage)
        count = maps.activations.shape[0]
        if channels > count:
            raise InvalidInput(f"stage {stage} has {count} channels; ask for at most that many")
        means = maps.activations.mean(axis=(1, 2))
        top = np.argsort(means)[::-1][:channels]
        if format == "png":
            tiles = render.feature_tiles(maps.activations, top)
            picture = await asyncio.to_thread(render.tile_grid, tiles, 96)
            return _with_shape(picture, maps.activations.shape, top)
        return (
            FeaturesResponse(
                **model_info(spec),
                stage=f"C{maps.stage.number}",
                module=maps.stage.module,
                shape=list(maps.activations.shape),
                channel_means=np.round(means, 5).tolist(),
                most_active=top.tolist(),
            )
            .model_dump_json()
            .encode()
        )

    params = f"features:{stage}:{channels}:{format}"
    body, cache = await unless_disconnected(request, pipeline.cached_body(data, params, compute))
    shape, body = _split_shape(body) if format == "png" else ({}, body)
    return _answer(body, format, cache, shape)


@router.get("/model/kernels", responses={200: {"content": {"image/png": {}}}, **ERROR_RESPONSES})
async def kernels(
    inspector: Annotated[ModelInspector, Depends(pinned_inspector)],
) -> Response:
    """The first convolution's filters as a picture grid."""
    weights = await inspector.kernels()
    picture = await asyncio.to_thread(render.tile_grid, render.kernel_tiles(weights), 32)
    return Response(
        picture,
        media_type="image/png",
        headers={"X-Kernel-Shape": ",".join(map(str, weights.shape))},
    )


@router.get("/model", response_model=ModelCardResponse, responses=ERROR_RESPONSES)
async def model_card(
    inspector: Annotated[ModelInspector, Depends(pinned_inspector)],
) -> ModelCardResponse:
    """What is loaded, measured from the model: size, cost, stages, preprocessing, backend."""
    card = await inspector.card()
    return ModelCardResponse.model_validate(card, from_attributes=True)


def _answer(
    body: bytes, format: str, cache: str, headers: dict[str, str] | None = None
) -> Response:
    media_type = "image/png" if format == "png" else "application/json"
    return Response(body, media_type=media_type, headers={"X-Cache": cache, **(headers or {})})


# A cached feature picture keeps its shape headers: a small JSON prefix line before the PNG.
def _with_shape(picture: bytes, shape: tuple[int, ...], top: np.ndarray) -> bytes:
    header: dict[str, Any] = {
        "X-Feature-Shape": ",".join(map(str, shape)),
        "X-Feature-Channels": ",".join(map(str, top.tolist())),
    }
    return json.dumps(header).encode() + b"\n" + picture


def _split_shape(body: bytes) -> tuple[dict[str, str], bytes]:
    header, picture = body.split(b"\n", 1)
    return json.loads(header), picture

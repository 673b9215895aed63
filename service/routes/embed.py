"""POST /v1/embed."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.http.admission import USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.schemas import EmbedResponse
from service.http.uploads import read_images
from service.pipeline import Pipeline
from service.routes.deps import (
    ERROR_RESPONSES,
    SINGLE_IMAGE_BODY,
    answer_headers,
    get_settings,
    model_info,
    pinned_pipeline,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["embed"])


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_IMAGE_BODY | USES_MODEL,
)
async def embed(
    request: Request,
    response: Response,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> EmbedResponse:
    """The image's L2-normalised embedding (the model's pooled features)."""
    (data,) = (await read_images(request, settings)).images
    inference = await unless_disconnected(request, pipeline.run(data))
    spec = pipeline.status().spec
    answer_headers(response, inference)
    return EmbedResponse(
        **model_info(spec),
        dim=spec.embedding_dim,
        embedding=inference.outputs.embedding.tolist(),
        cache=inference.cache,
        batch_size=inference.batch_size,
        timings_ms=inference.timings_ms,
    )

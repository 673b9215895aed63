"""Task heads on the live backbone: attach (or replace), list, remove. Writes need the API key
whenever one is set, as the other write routes do."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.heads.attached import AttachedHeads
from service.http.schemas import ErrorResponse
from service.model.spec import ModelSpec
from service.pipeline import Pipeline
from service.routes.deps import ERROR_RESPONSES, checked, serving_of

router = APIRouter(prefix="/v1/heads", tags=["heads"])

HEAD_ERRORS: dict[int | str, dict[str, Any]] = {
    status: ERROR_RESPONSES[status] for status in (400, 401, 422, 503)
}
HEAD_ERRORS |= {
    404: {"model": ErrorResponse, "description": "no such head"},
    409: {
        "model": ErrorResponse,
        "description": "trained on another base model, or a full fine-tune (a model version)",
    },
}


class NewHead(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        description="the MODEL_DIR `resnet-serve finetune --mode head` wrote, on the server",
        examples=["/models/document-or-not"],
    )


class HeadDescription(BaseModel):
    name: str
    classes: list[str]
    source: str
    base_fingerprint: str | None
    validation_top1: float | None = Field(description="from the directory's metrics.json")
    attached: bool = Field(description="trained on the live version's base: it answers")
    error: str | None = Field(description="why the head does not load, when it does not")


class HeadsResponse(BaseModel):
    heads: list[HeadDescription]


def get_heads(request: Request) -> AttachedHeads:
    heads: AttachedHeads = request.app.state.heads
    return heads


async def live_spec(request: Request) -> ModelSpec:
    """The live model's spec: what a head must have been trained on. (Not the pipeline as a
    dependency: these routes send nothing to the model, and are not admitted at its door.)"""
    pipeline: Pipeline = await checked(serving_of(request.app.state, None).pipeline)
    return pipeline.status().spec


@router.get("", response_model=HeadsResponse, responses=HEAD_ERRORS)
async def list_heads(
    heads: Annotated[AttachedHeads, Depends(get_heads)],
    spec: Annotated[ModelSpec, Depends(live_spec)],
) -> dict[str, Any]:
    """Every head: its classes, source, base, validation top-1, and whether it answers."""
    return {"heads": heads.describe(spec)}


@router.put(
    "/{name}",
    response_model=HeadDescription,
    status_code=201,
    responses=HEAD_ERRORS | {200: {"model": HeadDescription, "description": "replaced"}},
)
async def attach_head(
    name: str,
    body: NewHead,
    response: Response,
    heads: Annotated[AttachedHeads, Depends(get_heads)],
    spec: Annotated[ModelSpec, Depends(live_spec)],
) -> dict[str, Any]:
    """Attach a head (201), or replace one of that name (200); it answers from the next
    request on, in every HTTP worker."""
    _, created = heads.attach(name, body.source, spec)
    response.status_code = 201 if created else 200
    return next(head for head in heads.describe(spec) if head["name"] == name)


@router.delete("/{name}", status_code=204, responses=HEAD_ERRORS)
async def remove_head(
    name: str,
    heads: Annotated[AttachedHeads, Depends(get_heads)],
    spec: Annotated[ModelSpec, Depends(live_spec)],
) -> Response:
    heads.remove(name, spec)
    return Response(status_code=204)

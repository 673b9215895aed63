"""Model versions: list, add (loaded and re-embedded in the background), make live, remove.
Behind the API key whenever one is set."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.errors import NotReady
from service.http.schemas import ErrorResponse
from service.routes.deps import ERROR_RESPONSES
from service.versions.serving import Versions

router = APIRouter(prefix="/v1/models", tags=["models"])

MANAGEMENT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: ERROR_RESPONSES[status] for status in (400, 401, 422, 503)
}
MANAGEMENT_ERRORS |= {
    404: {"model": ErrorResponse, "description": "no such version"},
    409: {"model": ErrorResponse, "description": "the version exists, is live, or is not ready"},
    507: {"model": ErrorResponse, "description": "the version would not fit in memory"},
}


class NewVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="1-63 of a-z 0-9 . _ -", examples=["v2"])
    weights: str = Field(
        description="anything RESNET_SERVE_WEIGHTS accepts: pretrained, a file, a model directory",
        examples=["/models/finetuned"],
    )
    model: str | None = Field(None, description="timm model id; default: the live version's")


class ReEmbedding(BaseModel):
    done: int
    skipped: int = Field(description="items stored without an image: not embedded again")
    total: int
    items_per_s: float
    seconds_left: float | None


class VersionInfo(BaseModel):
    name: str
    state: str = Field(description="loading, re-embedding, ready, live or failed")
    weights: str
    model: str
    reason: str | None = Field(description="why it failed")
    progress: ReEmbedding | None
    fingerprint: str | None = None
    labels_source: str | None = None
    backend: str | None = None
    memory_bytes: int | None = Field(None, description="its weights' bytes")


class VersionsResponse(BaseModel):
    live: str
    versions: list[VersionInfo]


async def get_versions(request: Request) -> Versions:
    versions: Versions | None = getattr(request.app.state, "versions", None)
    if versions is None:
        raise NotReady("model versions are not hosted here (Ray Serve: the default version only)")
    return versions


HostedVersions = Annotated[Versions, Depends(get_versions)]


@router.get("", response_model=VersionsResponse, responses=MANAGEMENT_ERRORS)
async def list_versions(versions: HostedVersions) -> dict[str, Any]:
    """The live version and every version with its state."""
    return await versions.describe()


@router.post("", status_code=202, response_model=VersionInfo, responses=MANAGEMENT_ERRORS)
async def add_version(new: NewVersion, versions: HostedVersions) -> dict[str, Any]:
    """Load a version beside the live one; it re-embeds every stored item in the background,
    then is `ready` to be made live."""
    return await versions.add(new.name, new.weights, new.model)


@router.post("/{name}/activate", response_model=VersionsResponse, responses=MANAGEMENT_ERRORS)
async def activate_version(name: str, versions: HostedVersions) -> dict[str, Any]:
    """Make a ready version live (or go back to the previous one): every route switches at
    once; requests in flight finish on the version they started with."""
    return await versions.activate(name)


@router.delete("/{name}", status_code=204, responses=MANAGEMENT_ERRORS)
async def remove_version(name: str, versions: HostedVersions) -> Response:
    """Remove a version that is not live: its model and its index."""
    await versions.remove(name)
    return Response(status_code=204)

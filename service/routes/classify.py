"""POST /v1/classify and /v1/classify/batch."""

import asyncio
import time
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from service.errors import INTERNAL, InvalidInput, describe_error
from service.heads.head import Head
from service.http.admission import BULK_WORK, USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.limits import body_limit
from service.http.schemas import (
    BatchClassifyResponse,
    BatchItem,
    ClassifyResponse,
    ErrorDetail,
    HeadAnswer,
)
from service.http.schemas import Prediction as PredictionOut
from service.http.uploads import read_images, read_many_images
from service.model.spec import ModelSpec
from service.pipeline import Inference, Pipeline
from service.routes.deps import (
    ERROR_RESPONSES,
    SINGLE_IMAGE_BODY,
    answer_headers,
    get_settings,
    model_info,
    pinned_pipeline,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["classify"])
TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to return")]
Heads = Annotated[
    str | None,
    Query(description="the heads to answer with: a,b; empty for none; absent for all"),
]


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_IMAGE_BODY | USES_MODEL,
)
async def classify(
    request: Request,
    response: Response,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
    top_k: TopK = 5,
    heads: Heads = None,
) -> ClassifyResponse:
    """Top-k ImageNet classes of one image, and each attached head's."""
    chosen = chosen_heads(request, pipeline.status().spec, heads)
    (data,) = (await read_images(request, settings)).images
    inference = await unless_disconnected(request, pipeline.run(data))
    spec = pipeline.status().spec
    answer_headers(response, inference)
    return ClassifyResponse(
        **model_info(spec),
        predictions=top_predictions(inference.outputs.probabilities, spec.labels, top_k),
        heads=heads_answers(chosen, inference.outputs.embedding, top_k),
        cache=inference.cache,
        batch_size=inference.batch_size,
        timings_ms=inference.timings_ms,
    )


@router.post(
    "/classify/batch",
    response_model=BatchClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=USES_MODEL | BULK_WORK | body_limit("batch"),
)
async def classify_batch(
    request: Request,
    pipeline: Annotated[Pipeline, Depends(pinned_pipeline)],
    settings: Annotated[Settings, Depends(get_settings)],
    top_k: TopK = 5,
    heads: Heads = None,
) -> BatchClassifyResponse:
    """Top-k classes for each of several images (multipart `files`), and each attached
    head's; a bad file fails alone."""
    started = time.perf_counter()
    chosen = chosen_heads(request, pipeline.status().spec, heads)
    uploads = await read_many_images(request, settings)
    outcomes = await unless_disconnected(
        request,
        asyncio.gather(*(pipeline.run(u.data) for u in uploads), return_exceptions=True),
    )
    spec = pipeline.status().spec
    results = [
        _batch_item(index, upload.filename, outcome, spec, top_k, chosen)
        for index, (upload, outcome) in enumerate(zip(uploads, outcomes, strict=True))
    ]
    total_ms = round(1000 * (time.perf_counter() - started), 2)
    return BatchClassifyResponse(
        **model_info(spec), results=results, timings_ms={"total": total_ms}
    )


def _batch_item(
    index: int,
    filename: str,
    outcome: Inference | BaseException,
    spec: ModelSpec,
    top_k: int,
    chosen: dict[str, Head],
) -> BatchItem:
    if isinstance(outcome, Inference):
        return BatchItem(
            index=index,
            filename=filename,
            predictions=top_predictions(outcome.outputs.probabilities, spec.labels, top_k),
            heads=heads_answers(chosen, outcome.outputs.embedding, top_k),
            cache=outcome.cache,
        )
    if not isinstance(outcome, Exception):
        raise outcome
    _, code, message = describe_error(outcome)
    if code == INTERNAL:
        raise outcome  # a bug, not a bad item: the handler answers 500 for the whole request
    return BatchItem(index=index, filename=filename, error=ErrorDetail(code=code, message=message))


def top_predictions(
    probabilities: np.ndarray, labels: Sequence[str], top_k: int
) -> list[PredictionOut]:
    k = min(top_k, len(labels))
    best = np.argpartition(probabilities, -k)[-k:]
    best = best[np.argsort(probabilities[best])[::-1]]
    return [
        PredictionOut(class_id=int(i), label=labels[i], score=float(probabilities[i])) for i in best
    ]


def heads_answers(
    heads: dict[str, Head], embedding: np.ndarray, top_k: int
) -> dict[str, HeadAnswer]:
    """Each head's top-k for one image, from its embedding (no second forward pass)."""
    return {
        name: HeadAnswer(
            predictions=top_predictions(head.probabilities(embedding), head.classes, top_k)
        )
        for name, head in heads.items()
    }


def chosen_heads(request: Request, spec: ModelSpec, wanted: str | None) -> dict[str, Head]:
    """The heads a request asks for: every answering head (no `heads`), none (`heads=`), or
    the ones named (`heads=a,b`; a head that does not answer is a 422)."""
    answering: dict[str, Head] = request.app.state.heads.answering(spec)
    if wanted is None:
        return answering
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in answering]
    if unknown:
        raise InvalidInput(
            f"heads {unknown}: not attached to the live model; GET /v1/heads lists them"
        )
    return {name: answering[name] for name in names}

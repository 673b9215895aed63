"""Request and response models (what /docs shows)."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_input"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(BaseModel):
    model: str = Field(description="timm model id that produced the result")
    weights: str = Field(description="pretrained, random, lite0-package or file:<name>")
    warnings: list[str] = Field(
        description="non-empty when results are not what a production model would give"
    )


CacheStatus = Literal["hit", "miss"]
CACHE_FIELD = Field(description="hit: answered without running the model (also the X-Cache header)")


class Prediction(BaseModel):
    class_id: int
    label: str
    score: float = Field(ge=0, le=1)


class HeadAnswer(BaseModel):
    predictions: list[Prediction]


HEADS_FIELD: Any = Field(
    default_factory=dict,
    description="each attached head's top-k (`?heads=` chooses them), from the same forward",
)


class ClassifyResponse(ModelInfo):
    predictions: list[Prediction]
    heads: dict[str, HeadAnswer] = HEADS_FIELD
    cache: CacheStatus = CACHE_FIELD
    batch_size: int = Field(description="images in the model call that served this one")
    timings_ms: dict[str, float]


class BatchItem(BaseModel):
    index: int
    filename: str
    predictions: list[Prediction] | None = None
    heads: dict[str, HeadAnswer] = HEADS_FIELD
    cache: CacheStatus | None = None
    error: ErrorDetail | None = None


class BatchPutItem(BaseModel):
    index: int = Field(description="position in `files` and `items`")
    id: str | None = Field(description="the item id (null when the entry had none)")
    created: bool | None = Field(default=None, description="true: added; false: replaced an item")
    error: ErrorDetail | None = None


class BatchPutResponse(ModelInfo):
    results: list[BatchPutItem]
    added: int
    replaced: int
    failed: int
    timings_ms: dict[str, float]


class BatchClassifyResponse(ModelInfo):
    results: list[BatchItem]
    timings_ms: dict[str, float]


class EmbedResponse(ModelInfo):
    dim: int
    embedding: list[float] = Field(description="L2-normalised pooled features")
    cache: CacheStatus = CACHE_FIELD
    batch_size: int = Field(description="images in the model call that served this one")
    timings_ms: dict[str, float]


class DetectedResources(BaseModel):
    cores: int = Field(description="the smaller of the CPU affinity and the cgroup's CPU quota")
    affinity_cores: int
    cpu_quota: float | None = Field(description="cores of CPU time the cgroup allows; null: none")
    memory_limit_bytes: int | None = Field(description="the cgroup's memory limit; null: none")


class ReadyResponse(ModelInfo):
    status: str
    device: str
    backend: str
    fingerprint: str
    embedding_dim: int
    max_batch_size: int
    batch_limit: int = Field(
        description=(
            "the largest batch run now: below max_batch_size while the latency target is "
            "below two batch times at that size (batches shrink to meet it)"
        )
    )
    backend_choice: str = Field(description="why this backend and precision were chosen")
    backend_search: str | None = Field(
        None,
        description=(
            "the background search for a faster backend after a first start: its progress "
            "and estimate while it runs, then its outcome; null when none ran"
        ),
    )
    queue_depth: int
    resources: DetectedResources | None = Field(
        None, description="the CPU and memory this process may use, as its container allows"
    )


class ItemResponse(BaseModel):
    id: str
    metadata: dict[str, Any]
    added_at: datetime
    created: bool | None = Field(None, description="on PUT: true if new, false if replaced")


class SearchResult(BaseModel):
    id: str
    score: float = Field(description="cosine similarity, 1 is identical")
    metadata: dict[str, Any]


class SearchResponse(ModelInfo):
    results: list[SearchResult]
    cache: CacheStatus | None = Field(
        default=None, description="for an image query: as on classify"
    )
    timings_ms: dict[str, float]


class SimilarityResponse(ModelInfo):
    score: float = Field(description="cosine similarity of the two images' embeddings")
    timings_ms: dict[str, float]


class ExplainResponse(ModelInfo):
    class_id: int
    label: str
    score: float = Field(ge=0, le=1, description="the class's probability")
    method: str
    layer: str = Field(description="the stage the map comes from: C1..C5")
    module: str = Field(description="that stage's module in the model")
    heatmap: list[list[float]] = Field(
        description="class activation over the model's input, 0..1, rows top to bottom"
    )
    region: tuple[float, float, float, float] = Field(
        description="where the model's input lies in the image: left, top, right, bottom (0..1)"
    )


class FeaturesResponse(ModelInfo):
    stage: str
    module: str
    shape: list[int] = Field(description="channels, height, width")
    channel_means: list[float] = Field(description="mean activation of every channel")
    most_active: list[int] = Field(description="channels by mean activation, highest first")


class StageShapeOut(BaseModel):
    name: str
    module: str
    shape: tuple[int, int, int] = Field(description="channels, height, width")


class ModelCardResponse(BaseModel):
    model: str
    weights: str
    warnings: list[str]
    parameters: int
    gmacs: float = Field(description="multiply-accumulates per image at the input size, billions")
    input_size: tuple[int, int, int]
    preprocessing: dict[str, Any]
    stages: list[StageShapeOut]
    embedding_dim: int
    num_classes: int
    labels: str = Field(description="where the class names come from")
    backend: str
    precision: str
    device: str


class IndexResponse(BaseModel):
    count: int
    dimension: int
    kind: str = Field(description="the FAISS index serving now (Flat: exact)")
    factory: str = Field(description="INDEX_FACTORY: auto, or the factory string asked for")
    reason: str = Field(description="why this kind and these parameters")
    nprobe: int = Field(description="IVF lists searched per query (0: not IVF)")
    tombstones: int = Field(description="deleted vectors the next background build drops")
    pending: int = Field(
        description="items added since the last snapshot (in the delta index; re-added from "
        "the store on a restart)"
    )
    building: str | None = Field(description="why a background build is running, or null")
    last_build_error: str | None = Field(
        description="why the last background build failed (the index in use kept serving)"
    )
    model: str
    fingerprint: str
    index_bytes_per_item: int = Field(
        description="memory an item costs in the FAISS index: its code, its id, graph links"
    )
    store_vector_bytes: int = Field(description="bytes of one stored vector (float16)")
    filtered: str = Field(
        description="how filtered searches are answered: exact over the matching items while "
        "they are few, else the approximate index with the nprobe and re-rank depth measured "
        "to hold recall at the filter's share"
    )
    filtered_exact_up_to: int = Field(
        description="filters matching up to this many items are answered exactly (0: the "
        "index itself is exact, or not measured yet)"
    )

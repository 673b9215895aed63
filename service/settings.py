"""Typed service configuration: environment (RESNET_SERVE_*), then CLI flags on top."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import extras, resources

DEFAULT_MODEL = "resnet50.fb_swsl_ig1b_ft_in1k"


def available_cores() -> int:
    """CPU cores this process may use: its affinity (taskset, a container's CPU set) and
    its cgroup's CPU quota (`--cpus`, a Kubernetes CPU limit), whichever is less."""
    return resources.detect().cores


class Settings(BaseSettings):
    """Everything the service reads at start-up. Every field is also RESNET_SERVE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="RESNET_SERVE_", extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="timm model id")
    weights: str | None = Field(
        None,
        description=(
            "pretrained | random | lite0-package | a .safetensors/.pth path. Unset: pretrained, "
            "falling back to the offline EfficientNet-Lite0 weights when they cannot be had."
        ),
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int = Field(
        default_factory=available_cores, ge=1, description="CPU threads for the model"
    )

    backend: Literal["auto", "torch", "torch-compile", "openvino"] = Field(
        "auto",
        description=(
            "inference backend; auto: the fastest that passes the accuracy gate (torch-compile "
            "is tried by auto on CUDA only: on a CPU it compiles for minutes and loses to "
            "OpenVINO)"
        ),
    )
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = Field(
        "auto", description="numeric precision; fp16 is CUDA only, int8 OpenVINO only"
    )
    backend_decisions: Path | None = Field(
        None,
        description=(
            "a directory of backend decisions and converted models made ahead of time by "
            "`resnet-serve backends decide --out DIR` (read-only is fine): a decision there "
            "for this model, CPU and libraries serves from the first request; any other is "
            "ignored and decided again"
        ),
    )
    max_batch_size: int | None = Field(
        None, ge=1, le=256, description="most images in one model call; unset: measured"
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description=(
            "longest a batch waits for more images; 0: a batch starts as soon as the model is "
            "free (while it runs, the next batch fills up to the max batch size)"
        ),
    )
    queue_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description=(
            "images waiting for a batch before 429 (at least two batches); with workers, "
            "also each HTTP worker's shared-memory slots"
        ),
    )
    request_timeout_s: float = Field(
        30.0, gt=0, le=600, description="deadline from arrival to result before 504"
    )
    target_latency_ms: float = Field(
        10_000,
        gt=0,
        le=600_000,
        description=(
            "latency target: an image the model could not answer within it (measured batch "
            "times, images ahead) is refused at once with 429 and Retry-After. The default is "
            "a safety net well inside the request timeout; set your own SLO"
        ),
    )
    heads: str = Field(
        "",
        description=(
            "task heads attached at start-up: name=MODEL_DIR,name2=MODEL_DIR2 (directories "
            "`finetune --mode head` wrote); more through PUT /v1/heads/NAME"
        ),
    )
    client_max_in_flight: int = Field(
        0,
        ge=0,
        le=100_000,
        description=(
            "most requests for the model one client address may "
            "have in flight in each HTTP worker; more are refused with 429 (a fair share). "
            "0: no per-client limit"
        ),
    )
    watchdog_s: float = Field(
        30,
        gt=0,
        le=3600,
        description="a batch running longer than this turns /readyz red (a hung model)",
    )
    model_nice: int = Field(
        5,
        ge=0,
        le=19,
        description=(
            "on a CPU, the model's threads run this many steps nicer than the threads that "
            "answer requests, so a refusal, a cache hit or /readyz is not kept waiting behind a "
            "forward pass (0: equal priority)"
        ),
    )

    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="largest accepted image file"
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="largest accepted width x height (decompression bombs)"
    )
    max_batch_files: int = Field(32, ge=1, le=256, description="most files in one batch request")
    jpeg_decode: Literal["auto", "host", "device"] = Field(
        "auto",
        description=(
            "where baseline JPEGs are decoded: device (in the model process, nvJPEG on CUDA), "
            "host (Pillow in the HTTP process); auto: device on CUDA, else host"
        ),
    )
    decode_threads: int = Field(
        default_factory=available_cores, ge=1, description="threads that decode images"
    )

    explain_concurrency: int = Field(
        1, ge=1, le=16, description="explanations computed at once (each on an fp32 model copy)"
    )
    explain_queue: int = Field(
        4, ge=0, le=1000, description="explanations waiting beyond those before 429"
    )

    index_engine: Literal["faiss", "milvus"] = Field(
        "faiss",
        description=(
            "where items and their vectors live: faiss (files under DATA_DIR/index) or milvus "
            "(Milvus Lite or a Milvus server, RESNET_SERVE_MILVUS_URI; the milvus extra)"
        ),
    )
    milvus_uri: str = Field(
        "",
        description=(
            "with INDEX_ENGINE=milvus: a file path runs Milvus Lite embedded; "
            "http://host:19530 a Milvus server or cluster. Empty: DATA_DIR/index/milvus.db"
        ),
    )
    milvus_token: SecretStr | None = Field(None, description="a Milvus server's token")
    milvus_collection_prefix: str = Field(
        "resnet_serve",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="the Milvus collections' names start with this",
    )
    index_factory: str = Field(
        "auto",
        description=(
            "auto: exact while that is fast enough, then IVF with 4-bit PQ codes re-ranked "
            "exactly, rebuilt in the background as the collection grows; or a FAISS factory "
            "string: Flat (exact), HNSW32, IVF1024,Flat, ..."
        ),
    )
    index_target_ms: float = Field(
        5.0, gt=0, description="search latency `auto` plans for (exact while under half of it)"
    )
    index_exact_up_to: int | None = Field(
        None, ge=0, description="`auto` searches exactly up to this many items (default: measured)"
    )
    index_nprobe: int = Field(
        16, ge=1, description="IVF lists searched per query (explicit IVF factories; auto measures)"
    )
    index_ef_search: int = Field(64, ge=1, description="HNSW candidates per query")
    index_snapshot_every: int = Field(
        1000,
        ge=1,
        description=(
            "additions kept in the small delta index before a background merge writes a new "
            "snapshot (at least; a tenth of the collection when that is more)"
        ),
    )
    index_keep_images: bool = Field(
        True, description="keep uploaded item images so `index reindex` can re-embed them"
    )
    max_metadata_bytes: int = Field(
        16 * 1024, ge=2, le=1024 * 1024, description="largest item metadata JSON"
    )

    redis_url: str | None = Field(
        None, description="redis://host:port/db for the result cache; unset: in-process cache"
    )
    cache_ttl_s: float = Field(86_400, gt=0, description="how long a cached result lives")
    cache_memory_bytes: int | None = Field(
        None,
        ge=0,
        description=(
            "in-process cache size for the whole service when no Redis (0: off; HTTP workers "
            "split it). Unset: 256 MiB, at most an eighth of a container's memory limit"
        ),
    )
    cache_timeout_ms: float = Field(
        50, gt=0, le=10_000, description="longest a Redis call may take before it counts as a miss"
    )

    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description=(
            "HTTP worker processes; above 1, the model and the index run in worker processes "
            "of their own. Unset: 1 without a GPU (one process saturates the model), else "
            "cores - 2 (at most 16)"
        ),
    )

    ui: bool = Field(True, description="the web page at /ui (Gradio)")

    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description=(
            "port of the inference protocol's gRPC face (KServe v2 / Triton), on the same "
            "address as HTTP; 0: off. Needs the grpc extra"
        ),
    )
    ray_hop_window_ms: float = Field(
        5.0,
        ge=0,
        le=100,
        description=(
            "on Ray: how long an image may wait for others to share its call to a Model "
            "replica while a call is out (none waits while the replica is free)"
        ),
    )
    ray_hop_calls: int = Field(
        4,
        ge=1,
        le=256,
        description=(
            "on Ray: calls to the Model replicas an Ingress replica has out at once; past "
            "them images wait for one to return and then go together (two a Model replica "
            "keeps each one's next batch waiting there)"
        ),
    )
    ray_by_value_bytes: int = Field(
        524288,
        ge=0,
        le=1 << 30,
        description=(
            "on Ray: a call between deployments carrying up to this many bytes (images, "
            "vectors) goes by value over Serve's gRPC transport, a larger one through Ray's "
            "actor calls and object store; 0: always the latter"
        ),
    )
    ray_metrics_every_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "on Ray: how often each Model replica publishes its metrics for the Ingress's "
            "/metrics (a replica silent for three periods drops out)"
        ),
    )
    oip_model_name: str = Field(
        "resnet-serve",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="the model's name in the inference protocol (/v2/models/NAME, gRPC)",
    )

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    data_dir: Path = Field(Path("data"), description="where the index and other state live")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one object per line with the request id"
    )

    api_key: SecretStr | None = Field(
        None,
        description=(
            "when set, requests in api_key_scope need it (Authorization: Bearer, or X-API-Key) "
            "and the web page asks for it"
        ),
    )
    api_key_scope: Literal["writes", "all"] = Field(
        "writes",
        description="writes: index writes need the key; all: everything but /healthz, /readyz",
    )
    cors_origins: str = Field(
        "",
        description="comma-separated origins allowed to call the API from a browser; empty: none",
    )

    @property
    def head_sources(self) -> dict[str, str]:
        """RESNET_SERVE_HEADS as name -> directory."""
        pairs = [part.strip() for part in self.heads.split(",") if part.strip()]
        return dict(pair.split("=", 1) for pair in pairs)

    @field_validator("heads")
    @classmethod
    def _heads_are_pairs(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",") if p.strip()):
            name, _, directory = part.partition("=")
            if not name.strip() or not directory.strip():
                raise ValueError(f"{part!r}: give each head as name=MODEL_DIR")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("backend", "precision", mode="before")
    @classmethod
    def _lowercase_choice(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _asked_for_features_are_installed(self) -> "Settings":
        """A setting that asks for a feature of a missing extra stops the start; a default
        that would use one (the page at /ui, the backend search) quietly does without."""
        wanted: list[tuple[bool, extras.Extra, str]] = [
            (self.ui and "ui" in self.model_fields_set, "ui", "RESNET_SERVE_UI=true"),
            (self.backend == "openvino", "openvino", "RESNET_SERVE_BACKEND=openvino"),
            (self.precision == "int8", "openvino", "RESNET_SERVE_PRECISION=int8"),
            (self.jpeg_decode == "device", "gpu", "RESNET_SERVE_JPEG_DECODE=device"),
            (self.index_engine == "milvus", "milvus", "RESNET_SERVE_INDEX_ENGINE=milvus"),
            (
                self.grpc_port != 0 and "grpc_port" in self.model_fields_set,
                "grpc",
                "RESNET_SERVE_GRPC_PORT",
            ),
        ]
        for asked, extra, setting in wanted:
            if asked and not extras.installed(extra):
                raise ValueError(extras.missing(extra, setting))
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def model_cache_dir(self) -> Path:
        """Converted models, calibration results and backend choices, keyed by fingerprint."""
        return self.data_dir / "models"

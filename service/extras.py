"""The optional parts of the install (pyproject's extras) and what to say when one is missing.

The core install serves classify, embed and search on torch; each extra adds one feature and
is imported only where that feature runs. A feature whose extra is absent answers with the
message below (a 503 for a route, a start-up error for a setting that asks for it), never an
ImportError.
"""

from importlib.util import find_spec
from typing import Literal

Extra = Literal[
    "openvino", "explain", "ui", "gpu", "grpc", "milvus", "ray", "parquet", "finetune", "otel"
]

# The top-level modules each extra brings; all of them must import for the feature to run.
MODULES: dict[Extra, tuple[str, ...]] = {
    "openvino": ("openvino", "nncf"),
    "explain": ("pytorch_grad_cam",),
    "ui": ("gradio",),
    "gpu": ("torchcodec",),
    "grpc": ("grpc", "tritonclient"),
    "milvus": ("pymilvus", "milvus_lite"),
    "ray": ("ray",),
    "parquet": ("pyarrow",),
    "finetune": ("matplotlib",),
    "otel": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
}


def installed(extra: Extra) -> bool:
    """Whether every module of `extra` can be imported here (found, not imported: cheap)."""
    return all(find_spec(module) is not None for module in MODULES[extra])


def missing(extra: Extra, feature: str) -> str:
    """What to tell the user whose `feature` needs `extra`, which is not installed."""
    return (
        f"{feature} needs the '{extra}' extra, which is not installed here: "
        f"pip install 'resnet-serve[{extra}]' (the container image: add {extra} to its "
        "EXTRAS build argument)"
    )

"""The model as the inference protocol sees it: its inputs and outputs, metadata, Triton's
config, and one inference request answered through the service's pipeline.

Inputs (one per request): IMAGE, encoded images (JPEG, PNG, WebP) as BYTES [-1, 1], decoded
and preprocessed exactly as /v1 does; or PIXELS, FP32 [-1, 3, H, W] preprocessed by the
client (the model's resize, crop and mean/std normalisation; it is taken back to the 8-bit
pixels the model is fed, which is exact for tensors made from 8-bit images). Outputs:
PROBABILITIES FP32 [-1, classes] (Triton's classification extension answers
"score:index:label" strings instead) and EMBEDDING FP32 [-1, dim], L2-normalised.

Each image enters the dynamic batcher on its own, so a request's images share batches with
everyone else's; a bad image fails the request with a message naming its index.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput, ServiceError, describe_error
from service.model.spec import ModelSpec
from service.oip.tensors import BYTES, Tensor
from service.pipeline import Inference, Pipeline

IMAGE, PIXELS = "IMAGE", "PIXELS"
PROBABILITIES, EMBEDDING = "PROBABILITIES", "EMBEDDING"
OUTPUTS = (PROBABILITIES, EMBEDDING)
PLATFORM = "resnet-serve"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int = 0  # top-k as "score:index:label" strings; 0: the probabilities
    binary: bool = False  # REST: answered in the binary extension


@dataclass(frozen=True)
class InferRequest:
    inputs: Sequence[Tensor]
    outputs: Sequence[RequestedOutput]  # empty: every output
    id: str = ""


@dataclass
class Answer:
    """The outputs, and where this request's time went (for the statistics)."""

    outputs: list[Tensor]
    queue_ms: float = 0.0
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    cache_hits: int = 0
    images: int = 0
    timings: list[dict[str, float]] = field(default_factory=list)


def input_size(spec: ModelSpec) -> tuple[int, int, int]:
    channels, height, width = spec.data_config["input_size"]
    return int(channels), int(height), int(width)


def metadata(name: str, spec: ModelSpec, versions: Sequence[str]) -> dict[str, Any]:
    """The model metadata document (the same fields over REST and gRPC)."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": f"{PLATFORM}:{spec.model_id}",
        "inputs": [
            {"name": IMAGE, "datatype": BYTES, "shape": [-1, 1]},
            {"name": PIXELS, "datatype": "FP32", "shape": [-1, *input_size(spec)]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, spec.num_classes]},
            {"name": EMBEDDING, "datatype": "FP32", "shape": [-1, spec.embedding_dim]},
        ],
    }


def config(name: str, spec: ModelSpec, max_batch_size: int) -> dict[str, Any]:
    """Triton's model configuration, the fields its clients and perf_analyzer read."""
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": max_batch_size,
        "input": [
            {"name": IMAGE, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]},
            {
                "name": PIXELS,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(input_size(spec)),
            },
        ],
        "output": [
            {"name": PROBABILITIES, "data_type": "TYPE_FP32", "dims": [spec.num_classes]},
            {"name": EMBEDDING, "data_type": "TYPE_FP32", "dims": [spec.embedding_dim]},
        ],
        "dynamic_batching": {},
        "parameters": {"timm_model": {"string_value": spec.model_id}},
    }


async def infer(
    pipeline: Pipeline, spec: ModelSpec, request: InferRequest, max_batch_size: int
) -> Answer:
    """Answer one request: each image through the pipeline, then the outputs asked for."""
    wanted = _requested(request.outputs, spec)
    runs = _runs(pipeline, spec, request.inputs, max_batch_size)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            raise _named(outcome, index)
    inferences = [outcome for outcome in outcomes if isinstance(outcome, Inference)]
    answer = Answer([_output(w, inferences, spec) for w in wanted], images=len(inferences))
    for inference in inferences:
        timings = inference.timings_ms
        answer.queue_ms += timings.get("queue", 0.0)
        answer.decode_ms += timings.get("decode", 0.0)
        answer.inference_ms += timings.get("inference", 0.0)
        answer.cache_hits += inference.cache == "hit"
        answer.timings.append(timings)
    return answer


def _runs(
    pipeline: Pipeline, spec: ModelSpec, inputs: Sequence[Tensor], max_batch_size: int
) -> list[Any]:
    if len(inputs) != 1 or inputs[0].name not in (IMAGE, PIXELS):
        names = [tensor.name for tensor in inputs]
        raise InvalidInput(f"give exactly one input, {IMAGE} or {PIXELS}; got {names}")
    (tensor,) = inputs
    count = tensor.shape[0] if tensor.shape else 0
    if not 1 <= count <= max_batch_size:
        raise InvalidInput(
            f"input {tensor.name!r}: a batch of {count}; this model takes 1 to {max_batch_size}"
        )
    if tensor.name == IMAGE:
        if tensor.datatype != BYTES or tensor.shape not in ((count,), (count, 1)):
            raise InvalidInput(
                f"input {IMAGE!r} is BYTES of shape [-1, 1] (encoded images); "
                f"got {tensor.datatype} {list(tensor.shape)}"
            )
        assert isinstance(tensor.data, list)
        return [pipeline.run(image) for image in tensor.data]
    expected = (count, *input_size(spec))
    if tensor.datatype != "FP32" or tensor.shape != expected:
        raise InvalidInput(
            f"input {PIXELS!r} is FP32 of shape [-1, {', '.join(map(str, expected[1:]))}]; "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    assert isinstance(tensor.data, np.ndarray)
    return [pipeline.run_pixels(pixels) for pixels in _to_pixels(tensor.data, spec)]


def _to_pixels(normalised: np.ndarray, spec: ModelSpec) -> list[np.ndarray]:
    """(n, 3, H, W) normalised floats -> n (H, W, 3) uint8 images, as the model is fed."""
    if not np.isfinite(normalised).all():
        raise InvalidInput(f"input {PIXELS!r} holds NaN or infinity")
    mean = np.asarray(spec.data_config["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.data_config["std"], np.float32).reshape(1, 3, 1, 1)
    scaled = (normalised * std + mean) * 255.0
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return [np.ascontiguousarray(image) for image in pixels]


def _requested(outputs: Sequence[RequestedOutput], spec: ModelSpec) -> list[RequestedOutput]:
    if not outputs:
        return [RequestedOutput(name) for name in OUTPUTS]
    for output in outputs:
        if output.name not in OUTPUTS:
            raise InvalidInput(f"unknown output {output.name!r}; outputs: {', '.join(OUTPUTS)}")
        if output.classification and output.name != PROBABILITIES:
            raise InvalidInput(f"classification applies to {PROBABILITIES}, not {output.name}")
        if output.classification > spec.num_classes:
            raise InvalidInput(
                f"classification {output.classification}: the model has {spec.num_classes} classes"
            )
    return list(outputs)


def _output(wanted: RequestedOutput, inferences: list[Inference], spec: ModelSpec) -> Tensor:
    if wanted.name == EMBEDDING:
        rows = np.stack([inference.outputs.embedding for inference in inferences])
        return Tensor(EMBEDDING, "FP32", rows.shape, rows.astype(np.float32, copy=False))
    rows = np.stack([inference.outputs.probabilities for inference in inferences])
    if not wanted.classification:
        return Tensor(PROBABILITIES, "FP32", rows.shape, rows.astype(np.float32, copy=False))
    k = wanted.classification
    labels: list[bytes] = []
    for probabilities in rows:
        best = np.argsort(probabilities)[::-1][:k]
        labels += [f"{probabilities[i]:.6f}:{i}:{spec.labels[i]}".encode() for i in best]
    return Tensor(PROBABILITIES, BYTES, (len(rows), k), labels)


def _named(outcome: BaseException, index: int) -> BaseException:
    """A bad image's error names its index; anything else (overload, a deadline, a lost
    model) is the service's and passes unchanged."""
    if isinstance(outcome, ServiceError):
        status, _, message = describe_error(outcome)
        if 400 <= status < 499:
            return type(outcome)(f"image {index}: {message}")
    return outcome

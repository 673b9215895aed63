"""The model as the inference protocol sees it: its inputs and outputs, metadata, Triton's
config, and one inference request answered through the service's pipeline.

Inputs (one per request): IMAGE, encoded images (JPEG, PNG, WebP) as BYTES [-1, 1], decoded
and preprocessed exactly as /v1 does; or PIXELS, FP32 [-1, 3, H, W] preprocessed by the
client (the model's resize, crop and mean/std normalisation; it is taken back to the 8-bit
pixels the model is fed, which is exact for tensors made from 8-bit images). Outputs:
PROBABILITIES FP32 [-1, classes] (Triton's classification extension answers
"score:index:label" strings instead), EMBEDDING FP32 [-1, dim], L2-normalised, and for each
task head attached to the live model (service.heads) head_NAME FP32 [-1, its classes], from
the same forward pass's embedding (the classification extension applies to it too).

Each image enters the dynamic batcher on its own, so a request's images share batches with
everyone else's; a bad image fails the request with a message naming its index.
"""

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidInput, ServiceError, describe_error
from service.heads.head import Head
from service.model.spec import ModelSpec
from service.oip.tensors import BYTES, Tensor
from service.pipeline import Inference, Pipeline

IMAGE, PIXELS = "IMAGE", "PIXELS"
PROBABILITIES, EMBEDDING = "PROBABILITIES", "EMBEDDING"
OUTPUTS = (PROBABILITIES, EMBEDDING)
HEAD_PREFIX = "head_"  # an attached task head's output: head_NAME, FP32 [-1, its classes]
Heads = Mapping[str, Head]


def _head_outputs(heads: Heads) -> list[tuple[str, int]]:
    return [(HEAD_PREFIX + name, len(head.classes)) for name, head in sorted(heads.items())]


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


def metadata(name: str, spec: ModelSpec, versions: Sequence[str], heads: Heads) -> dict[str, Any]:
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
            *(
                {"name": output, "datatype": "FP32", "shape": [-1, classes]}
                for output, classes in _head_outputs(heads)
            ),
        ],
    }


def config(name: str, spec: ModelSpec, max_batch_size: int, heads: Heads) -> dict[str, Any]:
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
            *(
                {"name": output, "data_type": "TYPE_FP32", "dims": [classes]}
                for output, classes in _head_outputs(heads)
            ),
        ],
        "dynamic_batching": {},
        "parameters": {"timm_model": {"string_value": spec.model_id}},
    }


async def infer(
    pipeline: Pipeline, spec: ModelSpec, request: InferRequest, max_batch_size: int, heads: Heads
) -> Answer:
    """Answer one request: each image through the pipeline, then the outputs asked for (the
    heads' from the same forward pass's embeddings)."""
    wanted = _requested(request.outputs, spec, heads)
    runs = _runs(pipeline, spec, request.inputs, max_batch_size)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            raise _named(outcome, index)
    inferences = [outcome for outcome in outcomes if isinstance(outcome, Inference)]
    answer = Answer([_output(w, inferences, spec, heads) for w in wanted], images=len(inferences))
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


def _requested(
    outputs: Sequence[RequestedOutput], spec: ModelSpec, heads: Heads
) -> list[RequestedOutput]:
    classes = {PROBABILITIES: spec.num_classes} | dict(_head_outputs(heads))
    if not outputs:
        return [RequestedOutput(name) for name in (*OUTPUTS, *dict(_head_outputs(heads)))]
    for output in outputs:
        if output.name not in (*OUTPUTS, *classes):
            known = ", ".join((*OUTPUTS, *classes))
            raise InvalidInput(f"unknown output {output.name!r}; outputs: {known}")
        if output.classification and output.name not in classes:
            raise InvalidInput(
                f"classification applies to {PROBABILITIES} and the heads, not {output.name}"
            )
        if output.classification > classes.get(output.name, 0):
            raise InvalidInput(
                f"classification {output.classification}: {output.name} has "
                f"{classes.get(output.name)} classes"
            )
    return list(outputs)


def _output(
    wanted: RequestedOutput, inferences: list[Inference], spec: ModelSpec, heads: Heads
) -> Tensor:
    embeddings = np.stack([inference.outputs.embedding for inference in inferences])
    if wanted.name == EMBEDDING:
        return Tensor(
            EMBEDDING, "FP32", embeddings.shape, embeddings.astype(np.float32, copy=False)
        )
    if wanted.name == PROBABILITIES:
        rows = np.stack([inference.outputs.probabilities for inference in inferences])
        labels: Sequence[str] = spec.labels
    else:
        head = heads[wanted.name.removeprefix(HEAD_PREFIX)]
        rows, labels = head.probabilities(embeddings), head.classes
    if not wanted.classification:
        return Tensor(wanted.name, "FP32", rows.shape, rows.astype(np.float32, copy=False))
    k = wanted.classification
    strings: list[bytes] = []
    for probabilities in rows:
        best = np.argsort(probabilities)[::-1][:k]
        strings += [f"{probabilities[i]:.6f}:{i}:{labels[i]}".encode() for i in best]
    return Tensor(wanted.name, BYTES, (len(rows), k), strings)


def _named(outcome: BaseException, index: int) -> BaseException:
    """A bad image's error names its index; anything else (overload, a deadline, a lost
    model) is the service's and passes unchanged."""
    if isinstance(outcome, ServiceError):
        status, _, message = describe_error(outcome)
        if 400 <= status < 499:
            return type(outcome)(f"image {index}: {message}")
    return outcome

"""The protocol over REST, `/v2`: health, server and model metadata, Triton's config and
statistics, and inference with the JSON body of the spec and Triton's binary tensor
extension (`binary_data_size` on inputs, `binary_data` on outputs, and the
`Inference-Header-Content-Length` header), both ways. Errors are `{"error": "..."}`."""

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.errors import BadRequest, InvalidInput
from service.http.admission import USES_MODEL
from service.http.disconnect import unless_disconnected
from service.http.limits import body_limit
from service.oip.front import InferenceFront
from service.oip.model_face import Answer, InferRequest, RequestedOutput
from service.oip.tensors import Tensor, checked_shape, from_json, from_raw, to_json, to_raw


class ProtocolError(BaseModel):
    error: str


_ERRORS = {
    400: "bad input, named",
    401: "the API key is missing or wrong",
    404: "no such model or version",
    413: "the body is over the route's limit",
    429: "overloaded: retry after Retry-After",
    503: "the model is not ready",
    504: "the request's deadline passed",
}
PROTOCOL_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProtocolError, "description": description}
    for status, description in _ERRORS.items()
}
router = APIRouter(prefix="/v2", tags=["inference protocol (KServe v2)"], responses=PROTOCOL_ERRORS)
HEADER_LENGTH = "Inference-Header-Content-Length"
_VERSIONED = "/models/{model}/versions/{version}"


async def front_of(request: Request) -> InferenceFront:
    front: InferenceFront = request.app.state.oip
    return front


Front = Annotated[InferenceFront, Depends(front_of)]


@router.get("")
async def server_metadata(front: Front) -> dict[str, Any]:
    return front.server_metadata()


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


@router.get("/health/live", response_model=Live)
async def live() -> Live:
    return Live(live=True)


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "not ready"}},
)
async def ready(request: Request) -> JSONResponse:
    serving = getattr(request.app.state, "serving", None)
    is_ready = serving is not None and serving.pipeline.ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/stats")
async def all_stats(front: Front) -> dict[str, Any]:
    """Every version's statistics (Triton's extension; perf_analyzer reads it)."""
    return await front.statistics_of("", None)


@router.get("/models/{model}")
@router.get(_VERSIONED)
async def model_metadata(front: Front, model: str, version: str | None = None) -> dict[str, Any]:
    return await front.metadata(model, version)


_NOT_READY: dict[int | str, dict[str, Any]] = {
    400: {"model": ModelReady, "description": "not ready"}
}


@router.get("/models/{model}/ready", response_model=ModelReady, responses=_NOT_READY)
@router.get(_VERSIONED + "/ready", response_model=ModelReady, responses=_NOT_READY)
async def model_ready(front: Front, model: str, version: str | None = None) -> JSONResponse:
    """200 when the model (version) can answer, 400 otherwise, as Triton answers."""
    is_ready = front.ready(model, version)
    return JSONResponse({"name": model, "ready": is_ready}, status_code=200 if is_ready else 400)


@router.get("/models/{model}/config")
@router.get(_VERSIONED + "/config")
async def model_config(front: Front, model: str, version: str | None = None) -> dict[str, Any]:
    return await front.config(model, version)


@router.get("/models/{model}/stats")
@router.get(_VERSIONED + "/stats")
async def model_stats(front: Front, model: str, version: str | None = None) -> dict[str, Any]:
    return await front.statistics_of(model, version)


@router.post("/models/{model}/infer", openapi_extra=USES_MODEL | body_limit("batch"))
@router.post(_VERSIONED + "/infer", openapi_extra=USES_MODEL | body_limit("batch"))
async def infer(request: Request, front: Front, model: str, version: str | None = None) -> Response:
    """Classify or embed images (IMAGE, BYTES) or preprocessed pixels (PIXELS, FP32)."""
    serving = front.serving(model, version)  # unknown: 404 before the body is read
    body = await request.body()
    header, inputs, binary = _parse(body, request.headers.get(HEADER_LENGTH))
    outputs = _outputs(header, binary)
    infer_request = InferRequest(inputs, outputs, str(header.get("id", "")))
    answered_by, answer = await unless_disconnected(request, front.infer(serving, infer_request))
    return _response(front.name, answered_by, infer_request, answer, binary)


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[Tensor], bool]:
    """The JSON header, the input tensors, and whether outputs default to binary."""
    if header_length is None:
        length = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(
            f"{HEADER_LENGTH}: {header_length!r} is not a length within the body "
            f"({len(body)} bytes)"
        )
    else:
        length = int(header_length)
    try:
        header = json.loads(body if length == len(body) else body[:length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest("the request needs an 'inputs' list")
    raw = memoryview(body)[length:]
    inputs: list[Tensor] = []
    at = 0
    for described in header["inputs"]:
        if not isinstance(described, dict) or not isinstance(described.get("name"), str):
            raise InvalidInput("each input needs a 'name'")
        name = described["name"]
        datatype = described.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {name!r} needs a 'datatype'")
        shape = checked_shape(name, described.get("shape", None))
        size = _parameters(described).get("binary_data_size")
        if size is None:
            inputs.append(from_json(name, datatype, shape, described.get("data")))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(raw) - at:
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size!r} is beyond the "
                f"{len(raw) - at} bytes left in the body"
            )
        inputs.append(from_raw(name, datatype, shape, bytes(raw[at : at + size])))
        at += size
    if at != len(raw):
        raise InvalidInput(f"{len(raw) - at} bytes after the inputs' binary data")
    binary = _parameters(header).get("binary_data_output", False) is True
    return header, inputs, binary


def _outputs(header: dict[str, Any], binary_default: bool) -> list[RequestedOutput]:
    listed = header.get("outputs", [])
    if not isinstance(listed, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for described in listed:
        if not isinstance(described, dict) or not isinstance(described.get("name"), str):
            raise InvalidInput("each requested output needs a 'name'")
        parameters = _parameters(described)
        k = parameters.get("classification", 0)
        positive = isinstance(k, int) and not isinstance(k, bool) and k > 0
        if "classification" in parameters and not positive:
            raise InvalidInput(f"classification must be a positive integer, not {k!r}")
        binary = parameters.get("binary_data", binary_default)
        outputs.append(RequestedOutput(described["name"], k, binary is True))
    return outputs


def _parameters(described: dict[str, Any]) -> dict[str, Any]:
    parameters = described.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return parameters


def _response(
    name: str, version: str, request: InferRequest, answer: Answer, binary_default: bool
) -> Response:
    """The JSON answer, or the JSON header and the binary outputs after it."""
    binary_of = {output.name: output.binary for output in request.outputs}
    described: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for tensor in answer.outputs:
        output: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary_of.get(tensor.name, binary_default):
            data = to_raw(tensor)
            output["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            output["data"] = to_json(tensor)
        described.append(output)
    header: dict[str, Any] = {"model_name": name, "model_version": version, "outputs": described}
    if request.id:
        header["id"] = request.id
    if not raw:
        return JSONResponse(header)
    text = json.dumps(header).encode()
    return Response(
        text + b"".join(raw),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(text))},
    )

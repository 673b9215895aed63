"""One exception tree, one status map, one handler: every error is {"error": {code, message}}."""

import logging
import math
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from batching import BatcherStopped, BatchFailed, DeadlineExceeded, QueueFull
from index.filters import InvalidFilter
from index.milvus_collection import MilvusUnavailable

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors the service answers on purpose."""


class BadRequest(ServiceError):
    """The request is malformed (not the image: the HTTP envelope)."""


class Unauthorized(ServiceError):
    """No API key, or the wrong one, where the service requires one."""


class NotFound(ServiceError):
    pass


class MethodNotAllowed(ServiceError):
    pass


class Conflict(ServiceError):
    """The request contradicts the service's state (a version that exists, or is live)."""


class InsufficientMemory(ServiceError):
    """What the request would load does not fit in the memory there is."""


class PayloadTooLarge(ServiceError):
    """Over the byte limit, or over the pixel limit (decompression bomb)."""


class UnsupportedMediaType(ServiceError):
    pass


class InvalidInput(ServiceError):
    """Well-formed request, unusable content: empty, corrupt, not an image, bad parameter."""


class NotReady(ServiceError):
    pass


class Unavailable(ServiceError):
    """The service cannot do this now or here: an optional package is not installed, or the
    device has no memory left for it. Not the request's fault."""


class ClientDisconnected(ServiceError):
    """The client went away; nobody reads this answer."""


# status, code; looked up along the exception's MRO so subclasses inherit their parent's row.
STATUS_MAP: dict[type[Exception], tuple[int, str]] = {
    BadRequest: (400, "bad_request"),
    Unauthorized: (401, "unauthorized"),
    NotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    Conflict: (409, "conflict"),
    InsufficientMemory: (507, "insufficient_memory"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    InvalidInput: (422, "invalid_input"),
    # a filter the index engine cannot match (Milvus: control characters), found at search
    InvalidFilter: (422, "invalid_input"),
    RequestValidationError: (422, "invalid_input"),
    QueueFull: (429, "overloaded"),
    ClientDisconnected: (499, "client_closed_request"),
    NotReady: (503, "not_ready"),
    Unavailable: (503, "unavailable"),
    MilvusUnavailable: (503, "unavailable"),
    BatcherStopped: (503, "not_ready"),
    DeadlineExceeded: (504, "deadline_exceeded"),
    BatchFailed: (500, "inference_failed"),
}
INTERNAL = "internal"
# Starlette's own HTTPExceptions (unknown route, wrong method, bad multipart) carry a status;
# they get the code the map gives that status.
_CODE_OF_STATUS = {status: code for status, code in reversed(STATUS_MAP.values())}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def describe_error(exc: Exception) -> tuple[int, str, str]:
    """Status, code and message for any exception; unknown ones are a 500 "internal"."""
    if isinstance(exc, HTTPException):
        return exc.status_code, _CODE_OF_STATUS.get(exc.status_code, "http_error"), str(exc.detail)
    if isinstance(exc, RequestValidationError):
        status, code = STATUS_MAP[RequestValidationError]
        return status, code, "; ".join(_describe(e) for e in exc.errors())
    for exc_type in type(exc).__mro__:
        if exc_type in STATUS_MAP:
            status, code = STATUS_MAP[exc_type]
            return status, code, str(exc)
    return 500, INTERNAL, "internal server error"


# The inference protocol's paths answer its own error shape, {"error": "message"}, and a bad
# input there is a 400 (its clients know no 422).
PROTOCOL_PREFIX = "/v2"


def error_response(exc: Exception, path: str = "") -> JSONResponse:
    """The answer to `exc` for a request to `path` (in the protocol's shape under /v2)."""
    status, code, message = describe_error(exc)
    # Starlette's own carry what the status needs (405: Allow).
    headers: dict[str, str] = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if status == 500:
        log.error("%s answered %d: %s", type(exc).__name__, status, exc, exc_info=code == INTERNAL)
    elif status > 500:  # not ready, deadline: expected under restarts and overload; in /metrics
        log.debug("%s answered %d: %s", type(exc).__name__, status, exc)
    if path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/"):
        status = 400 if status == 422 else status
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _describe(error: dict[str, object]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")  # type: ignore[attr-defined]
    return f"{location}: {error.get('msg')}" if location else str(error.get("msg"))


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """Every method some route takes at this path (Starlette's own 405 names only the first
    route's, and several routes share an item's path)."""
    probe = {**scope, "method": ""}  # no route takes it: a path match is PARTIAL
    methods = {
        method
        for route in routes
        if route.matches(probe)[0] != Match.NONE
        for method in getattr(route, "methods", None) or ()
    }
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """`routes`: the API's own, for the Allow header of a 405."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            exc.headers = {"Allow": allowed_methods(routes, request.scope)}
        return error_response(exc, request.url.path)

    for exc_type in (*STATUS_MAP, HTTPException, Exception):
        app.add_exception_handler(exc_type, handle)

"""Read image bytes out of a request: multipart `file`/`files`, or JSON base64."""

import base64
import binascii
import json
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

_ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


async def read_one_image(request: Request, settings: Settings) -> bytes:
    """The image of a single-image request: multipart field `file` or JSON {"image": base64}."""
    kind = _body_kind(request)
    if kind == "json":
        return _decode_base64(await _json_field(request, "image"), settings, "image")
    async with request.form(max_files=1, max_fields=8) as form:  # closes spooled files
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise InvalidInput("multipart field 'file' with an image is required")
        return (await _read_part(part, settings)).data


async def read_many_images(request: Request, settings: Settings) -> list[Upload]:
    """The images of a batch request: repeated multipart field `files`."""
    if _body_kind(request) != "multipart":
        raise UnsupportedMediaType("send the images as multipart/form-data, field 'files'")
    async with request.form(max_files=settings.max_batch_files, max_fields=8) as form:
        parts = form.getlist("files")
        if not parts:
            raise InvalidInput("multipart field 'files' with at least one image is required")
        if not all(isinstance(part, UploadFile) for part in parts):
            raise InvalidInput("every 'files' entry must be a file upload")
        return [await _read_part(part, settings) for part in parts]  # type: ignore[arg-type]


def _body_kind(request: Request) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return "multipart"
    if content_type == "application/json":
        return "json"
    raise UnsupportedMediaType(
        f"content type {content_type or 'none'!r} is not accepted; "
        "send multipart/form-data or application/json"
    )


async def _read_part(part: UploadFile, settings: Settings) -> Upload:
    content_type = (part.content_type or "").lower()
    if content_type and not content_type.startswith(_ACCEPTED_PART_TYPES):
        raise UnsupportedMediaType(f"{part.filename or 'upload'} is {content_type}, not an image")
    if part.size is not None and part.size > settings.max_upload_bytes:
        raise PayloadTooLarge(_too_large(part.size, settings))
    return Upload(part.filename or "", await part.read())


async def _json_field(request: Request, field: str) -> str:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str):
        raise InvalidInput(f"JSON body needs a string field {field!r} holding base64 image bytes")
    return value


def _decode_base64(text: str, settings: Settings, field: str) -> bytes:
    if text.startswith("data:") and "," in text:  # accept data URLs as browsers produce them
        text = text.split(",", 1)[1]
    if len(text) > (settings.max_upload_bytes * 4) // 3 + 4:
        raise PayloadTooLarge(_too_large(len(text) * 3 // 4, settings))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{field!r} is not valid base64: {exc}") from exc


def _too_large(size: int, settings: Settings) -> str:
    return f"upload is {size} bytes; the limit is {settings.max_upload_bytes} bytes"

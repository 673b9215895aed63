"""Read image bytes out of a request: multipart file fields, or base64 strings in JSON."""

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from service import tracing
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.settings import Settings

_ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class ImageField:
    """Where one image travels: a multipart file field, or a base64 string in a JSON body."""

    multipart: str
    json: str


SINGLE_IMAGE = (ImageField("file", "image"),)


@dataclass(frozen=True)
class ImageForm:
    images: list[bytes]  # in the order of the fields asked for
    metadata: str | None  # the optional `metadata` field as JSON text


async def read_images(
    request: Request, settings: Settings, fields: tuple[ImageField, ...] = SINGLE_IMAGE
) -> ImageForm:
    """The images named by `fields` (all required) and an optional `metadata` field."""
    with tracing.span("read body"):
        return await _read_images(request, settings, fields)


async def _read_images(
    request: Request, settings: Settings, fields: tuple[ImageField, ...]
) -> ImageForm:
    if _body_kind(request) == "json":
        body = await _json_object(request)
        images = [
            _decode_base64(_string_field(body, field.json), settings, field.json)
            for field in fields
        ]
        metadata = body.get("metadata")
        return ImageForm(images, None if metadata is None else json.dumps(metadata))
    async with request.form(max_files=len(fields), max_fields=8) as form:  # closes spooled files
        images = []
        for field in fields:
            part = form.get(field.multipart)
            if not isinstance(part, UploadFile):
                raise InvalidInput(f"multipart field {field.multipart!r} with an image is required")
            images.append((await _read_part(part, settings)).data)
        text = form.get("metadata")
        if text is not None and not isinstance(text, str):
            raise InvalidInput("multipart field 'metadata' must be text (a JSON object)")
        return ImageForm(images, text)


async def read_many_images(request: Request, settings: Settings) -> list[Upload]:
    """The images of a batch request: repeated multipart field `files`."""
    return (await read_batch_form(request, settings))[0]


async def read_batch_form(
    request: Request, settings: Settings, text_field: str | None = None
) -> tuple[list[Upload], str | None]:
    """The images of a batch request (repeated multipart field `files`) and the optional text
    field `text_field`."""
    if _body_kind(request) != "multipart":
        raise UnsupportedMediaType("send the images as multipart/form-data, field 'files'")
    async with request.form(max_files=settings.max_batch_files, max_fields=8) as form:
        parts = form.getlist("files")
        if not parts:
            raise InvalidInput("multipart field 'files' with at least one image is required")
        if not all(isinstance(part, UploadFile) for part in parts):
            raise InvalidInput("every 'files' entry must be a file upload")
        text = form.get(text_field) if text_field else None
        if text is not None and not isinstance(text, str):
            raise InvalidInput(f"multipart field {text_field!r} must be text (JSON)")
        uploads = [await _read_part(part, settings) for part in parts]  # type: ignore[arg-type]
        return uploads, text


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


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:  # bad JSON or UTF-8, or an integer of over 4,300 digits
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("the JSON body must be an object")
    return body


def _string_field(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
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

"""Files the service wrote and reads back at start-up, read with pydantic models: a missing,
mistyped or unknown field is an error naming the file, the field and what to do, and a
configuration error ends the service (exit status 3 in every topology), never a loop of
restarts."""

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError


class BrokenFile(ValueError):
    """A file the service reads is not what it writes."""


M = TypeVar("M", bound=BaseModel)


def read_model(path: Path, model: type[M], remedy: str) -> M:
    """`path` as `model`; BrokenFile naming each wrong field and `remedy` otherwise."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BrokenFile(f"{path} is unreadable ({exc}): {remedy}") from None
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise BrokenFile(f"{path}: {wrong_fields(exc)}: {remedy}") from None


def wrong_fields(exc: ValidationError) -> str:
    """Each wrong field by its path in the document, and what is wrong with it."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'the document'}: {error['msg'].lower()}"
        for error in exc.errors()
    )

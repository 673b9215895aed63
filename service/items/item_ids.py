"""What an item id may be: 1..256 characters of a URL-safe set, path-like segments allowed."""

import re

from starlette.convertors import Convertor, register_url_convertor

from service.errors import InvalidInput

MAX_ID_LENGTH = 256
_ALLOWED = re.compile(r"[A-Za-z0-9._~:@+=/-]+")
# GET /v1/items/{id}/similar and /image would hide an item whose id ends like that.
RESERVED_LAST_SEGMENTS = ("similar", "image")
# POST /v1/items/batch: an item of that id would share its path.
RESERVED_IDS = ("batch",)


def validate_item_id(item_id: str) -> str:
    """Return the id, or raise InvalidInput saying what is wrong with it."""
    if not 1 <= len(item_id) <= MAX_ID_LENGTH:
        raise InvalidInput(f"item id must be 1 to {MAX_ID_LENGTH} characters, not {len(item_id)}")
    if not _ALLOWED.fullmatch(item_id):
        raise InvalidInput("item id may contain only letters, digits and . _ ~ : @ + = / -")
    if item_id in RESERVED_IDS:
        raise InvalidInput(f"item id {item_id!r} is reserved (POST /v1/items/{item_id})")
    segments = item_id.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidInput("item id segments between '/' must be non-empty and not '.' or '..'")
    if segments[-1] in RESERVED_LAST_SEGMENTS and len(segments) > 1:
        raise InvalidInput(
            f"item id must not end in '/{segments[-1]}' (reserved for the item routes "
            f"{', '.join(f'/{s}' for s in RESERVED_LAST_SEGMENTS)})"
        )
    return item_id


class ItemIdConvertor(Convertor[str]):
    """An item id in a route path: any path but a reserved id or one ending in a reserved
    segment, so `PUT /v1/items/a/similar` is a method the /similar route does not take (405),
    not an item called "a/similar" (and likewise `PUT /v1/items/batch`)."""

    regex = (
        "".join(f"(?!{reserved}$)" for reserved in RESERVED_IDS)
        + ".+"
        + "".join(f"(?<!/{segment})" for segment in RESERVED_LAST_SEGMENTS)
    )

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("item_id", ItemIdConvertor())

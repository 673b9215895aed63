"""Tensors as the protocol carries them: a datatype, a shape and the data, either as a JSON
list or as raw bytes (the binary extension, gRPC's raw contents). numpy only.

Nothing is allocated from what a header claims: a shape is checked against the bytes that
actually came before any array is made of them.
"""

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput

# The protocol's datatypes that have a fixed size, as numpy types (BYTES is separate).
FIXED: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix in raw form


@dataclass(frozen=True)
class Tensor:
    """One input or output: BYTES tensors hold a list of bytes, the others an array."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]

    def count(self) -> int:
        return math.prod(self.shape)


def checked_shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers")
    dims = [d for d in shape if isinstance(d, int) and not isinstance(d, bool) and d >= 0]
    if len(dims) != len(shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} must hold integers >= 0")
    return tuple(dims)


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> Tensor:
    """A tensor from its raw bytes; the byte count must match shape x datatype exactly."""
    count = math.prod(shape)
    if datatype == BYTES:
        return Tensor(name, datatype, shape, _split_bytes(name, raw, count))
    dtype = _dtype(name, datatype)
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return Tensor(name, datatype, shape, np.frombuffer(raw, dtype).reshape(shape))


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: object) -> Tensor:
    """A tensor from the JSON form: a (possibly nested) list. BYTES elements are strings;
    an encoded image is sent base64 encoded."""
    count = math.prod(shape)
    flat = _flatten(name, data, count)
    if len(flat) != count:
        raise InvalidInput(
            f"input {name!r}: {len(flat)} elements of data, but shape {list(shape)} holds {count}"
        )
    if datatype == BYTES:
        texts = [item for item in flat if isinstance(item, str)]
        if len(texts) != count:
            raise InvalidInput(f"input {name!r}: BYTES data must be strings")
        return Tensor(name, datatype, shape, [_base64(name, text) for text in texts])
    dtype = _dtype(name, datatype)
    if not all(isinstance(item, int | float) for item in flat):
        raise InvalidInput(f"input {name!r}: {datatype} data must be numbers")
    try:
        array = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from None
    return Tensor(name, datatype, shape, array.reshape(shape))


def to_raw(tensor: Tensor) -> bytes:
    if isinstance(tensor.data, list):
        return b"".join(_LENGTH.pack(len(item)) + item for item in tensor.data)
    return np.ascontiguousarray(tensor.data, FIXED[tensor.datatype]).tobytes()


def to_json(tensor: Tensor) -> list[Any]:
    if isinstance(tensor.data, list):
        return [item.decode("utf-8", "replace") for item in tensor.data]
    return list(np.asarray(tensor.data).reshape(-1).tolist())


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    if datatype not in FIXED:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}")
    return FIXED[datatype]


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    items: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + _LENGTH.size > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(raw, at)
        at += _LENGTH.size
        if at + length > len(raw):
            raise InvalidInput(
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes, "
                f"{len(raw) - at} are left"
            )
        items.append(raw[at : at + length])
        at += length
    if len(items) != count:
        raise InvalidInput(f"input {name!r}: {len(items)} BYTES elements, the shape holds {count}")
    return items


def _flatten(name: str, data: object, limit: int) -> list[object]:
    """The leaves of a nested list, refusing more than `limit` of them as soon as seen."""
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    flat: list[object] = []
    stack: list[object] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
            if len(flat) > limit:
                break
    return flat


def _base64(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"input {name!r}: a BYTES element is not base64") from None

"""The service's metadata filter as a Milvus boolean expression over the `metadata` JSON field.

The same syntax and meaning as the FAISS engine's (index.filters): keys AND together, a list
means one of its values, numbers compare by value (1 equals 1.0) and never equal strings or
booleans, null matches a null value. Values are always data: each is written as a Milvus
literal with its quotes and backslashes escaped, so a value such as `x" or 1 == 1 or "` is
matched literally, never read as expression text. Keys are written the same way, inside
the JSON path's brackets.
"""

import math

from index.filters import Filter, InvalidFilter, Scalar

FIELD = "metadata"


def milvus_expression(where: Filter) -> str:
    """`where` (validated by index.filters.validate_filter) as one Milvus expression."""
    clauses = []
    for key, options in where.items():
        path = f"{FIELD}[{string_literal(key)}]"
        terms = [_term(path, value) for value in options]
        matchable = [term for term in terms if term is not None]
        if not matchable:
            clauses.append("false")  # nan and inf equal nothing, as with FAISS
            continue
        clauses.append(matchable[0] if len(matchable) == 1 else f"({' or '.join(matchable)})")
    return " and ".join(clauses)


def _term(path: str, value: Scalar) -> str | None:
    if value is None:
        return f"{path} is null"
    if isinstance(value, bool):
        return f"{path} == {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{path} == {value}"
    if isinstance(value, float):
        return f"{path} == {value!r}" if math.isfinite(value) else None
    return f"{path} == {string_literal(value)}"


def string_literal(text: str) -> str:
    """A double-quoted Milvus string literal of exactly `text`."""
    if any(ord(character) < 0x20 for character in text):
        raise InvalidFilter(
            "filter keys and values with control characters cannot be matched on Milvus"
        )
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'

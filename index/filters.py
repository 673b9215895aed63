"""Filtered search: which items a metadata filter matches, as a bitmap over labels.

A filter is a JSON object over top-level metadata keys: a scalar value means equality, a
list means "one of", keys combine with AND: {"owner": ["ann", "bob"], "kind": "cat"}.
An inverted index maps (key, value) to the labels that hold it; labels only grow, so each
posting list is append-only and sorted. Deleted labels stay in their lists until the
collection is reopened: the live bitmap is ANDed in at query time.
"""

import json
import threading
from array import array
from typing import Any

import numpy as np

MAX_FILTER_KEYS = 16
MAX_FILTER_VALUES = 1024  # values in one key's list
Scalar = str | int | float | bool | None
Filter = dict[str, list[Scalar]]


class InvalidFilter(ValueError):
    """The filter is not a JSON object of scalars or lists of scalars."""


def parse_filter(text: str | None) -> Filter | None:
    """The filter in a query parameter, or None; raises InvalidFilter saying what is wrong."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise InvalidFilter(f"filter is not valid JSON: {exc}") from exc
    return validate_filter(value)


def validate_filter(value: Any) -> Filter:
    if not isinstance(value, dict) or not value:
        raise InvalidFilter('filter must be a non-empty JSON object, e.g. {"owner": "ann"}')
    if len(value) > MAX_FILTER_KEYS:
        raise InvalidFilter(f"filter has {len(value)} keys; at most {MAX_FILTER_KEYS}")
    parsed: Filter = {}
    for key, wanted in value.items():
        options = wanted if isinstance(wanted, list) else [wanted]
        if not options:
            raise InvalidFilter(f"filter key {key!r} has an empty list: nothing could match")
        if len(options) > MAX_FILTER_VALUES:
            raise InvalidFilter(
                f"filter key {key!r} lists {len(options)} values; at most {MAX_FILTER_VALUES}"
            )
        for option in options:
            if isinstance(option, (dict, list)):
                raise InvalidFilter(
                    f"filter key {key!r}: values must be strings, numbers, booleans or null "
                    "(a list means one of them)"
                )
        parsed[key] = options
    return parsed


def _term(key: str, value: Any) -> tuple[str, str] | None:
    """The posting key of a metadata value; None for values filters cannot name (objects,
    lists). Numbers compare by value (1 equals 1.0), and never equal strings or booleans.
    Never raises: it runs on the write path after the store has committed."""
    if isinstance(value, bool) or value is None:
        return key, json.dumps(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return key, f"n:{int(value)}"
    if isinstance(value, (int, float)):
        return key, f"n:{value!r}"  # exact digits for any int; nan and inf match nothing
    if isinstance(value, str):
        return key, f"s:{value}"
    return None


class MetadataPostings:
    """(key, value) -> labels, for every top-level scalar metadata value."""

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], array[int]] = {}
        self._lock = threading.Lock()  # appends vs. copies: arrays cannot grow while exported

    def add(self, label: int, metadata: dict[str, Any]) -> None:
        with self._lock:
            for key, value in metadata.items():
                term = _term(key, value)
                if term is not None:
                    self._lists.setdefault(term, array("q")).append(label)

    def matching(self, wanted: Filter, size: int) -> np.ndarray:
        """A bool per label (size of them): does the item match every key of the filter?"""
        result: np.ndarray | None = None
        for key, options in wanted.items():
            postings = []
            for option in options:
                term = _term(key, option)
                with self._lock:
                    posting = self._lists.get(term) if term else None
                    if posting:
                        postings.append(np.array(posting, dtype=np.int64))
            mask = np.zeros(size, bool)
            if postings:  # one scatter for every value of the key (10% of 1M: 100 lists)
                labels = np.concatenate(postings)
                mask[labels[labels < size]] = True
            result = mask if result is None else result & mask
        assert result is not None  # a filter has at least one key
        return result

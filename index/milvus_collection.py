"""The item index on Milvus: the same operations as index.collection.Collection, kept in a
Milvus collection through pymilvus, so the same code runs against Milvus Lite (embedded, a
local file, no server: `uri` is a path), Milvus Standalone or a Milvus Distributed cluster
(`uri` is `http://host:19530`).

Two Milvus collections per index: `{prefix}_items` (the id as primary key, the vector, the
metadata as JSON, a write label and the time it was added) and `{prefix}_images` (each
item's uploaded image in base64 parts of at most 60 KB, which a VARCHAR holds; Milvus needs
a vector in every collection, so each part carries a 2-d placeholder). Nothing is kept on
the machine that runs this code: losing it loses nothing.

Consistency: both collections are created with Strong consistency, so every read (get,
search, query) sees every write acknowledged before it, from any client: a write is
acknowledged when Milvus has accepted the upsert or delete. Scores are Milvus's COSINE
similarity of unit vectors, the inner product the FAISS engine returns.

The model the vectors came from is a property of the items collection; opening
an index of another model or dimension is ModelMismatch naming both (unless it is empty).
pymilvus is imported here only, when this engine is chosen (the `milvus` extra).
"""

import base64
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import numpy as np

from index.collection import CollectionStats, SearchHit
from index.filters import Filter, InvalidFilter
from index.milvus_filters import milvus_expression, string_literal
from index.store import ModelMismatch, StoredItem

log = logging.getLogger(__name__)

_IMAGE_PART_CHARS = 60_000  # base64 characters in one VARCHAR part (Milvus allows 65,535)
_ID_CHARS = 512
_PAGE = 1000  # rows a query or an iterator fetches at once
_STRONG = "Strong"
IDENTITY = "resnet_serve.model"  # the items collection's property naming its vectors' model
# Milvus's "collection not loaded": a server that restarted holds its collections released.
_NOT_LOADED = 101


def collection_names(prefix: str) -> tuple[str, str]:
    """The items and images collections of an index with this prefix."""
    return f"{prefix}_items", f"{prefix}_images"


def identity(d: int, fingerprint: str, model: str) -> dict[str, Any]:
    """What the items collection records of the model its vectors came from."""
    return {"fingerprint": fingerprint, "model": model, "d": d}


def create_items_collection(client: Any, name: str, d: int, made_by: dict[str, Any]) -> None:
    """An items collection for `d`-dimensional vectors of the model `made_by` names."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=_ID_CHARS)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=d)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("label", DataType.INT64)
    schema.add_field("added_at", DataType.DOUBLE)
    index = client.prepare_index_params()
    index.add_index("vector", metric_type="COSINE", index_type="AUTOINDEX")
    client.create_collection(
        name,
        schema=schema,
        index_params=index,
        consistency_level=_STRONG,
        properties={IDENTITY: json.dumps(made_by)},
    )


def read_image(client: Any, images: str, item_id: str) -> bytes | None:
    """An item's uploaded image, put together from its parts; None if it has none."""
    rows = client.query(
        images, filter=f"item == {string_literal(item_id)}", output_fields=["part", "data"]
    )
    if not rows:
        return None
    text = "".join(row["data"] for row in sorted(rows, key=lambda row: row["part"]))
    return base64.b64decode(text)


class MilvusUnavailable(RuntimeError):
    """Milvus did not answer (not the request's fault: the service answers 503)."""


P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_when_milvus_fails(method: Callable[P, R]) -> Callable[P, R]:
    """A failure of Milvus (down, timing out, refusing) is MilvusUnavailable naming it. A
    server that came back from a restart with the collections released is asked to load
    them, and the call is made once more."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        collection = args[0]  # the MilvusCollection the method is bound to
        assert isinstance(collection, MilvusCollection)
        try:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if getattr(exc, "code", None) != _NOT_LOADED:
                    raise
                log.warning(
                    "Milvus at %s had released the collections: loading them", collection.uri
                )
                collection.load()
                return method(*args, **kwargs)
        except InvalidFilter:
            raise  # the request's filter: a 4xx
        except Exception as exc:  # pymilvus's MilvusException, grpc's errors
            raise MilvusUnavailable(f"Milvus at {collection.uri}: {exc}") from exc

    return call


class MilvusCollection:
    def __init__(
        self,
        uri: str,
        *,
        d: int,
        fingerprint: str,
        model: str,
        prefix: str,
        token: str | None = None,
    ) -> None:
        from pymilvus import MilvusClient  # the milvus extra

        self.d = d
        self.fingerprint = fingerprint
        self.model = model
        self.uri = uri
        self._items, self._images = collection_names(prefix)
        try:
            self._client = MilvusClient(uri, token=token or "")
            self._open_or_create()
        except ModelMismatch:
            raise
        except Exception as exc:  # pymilvus raises its own and grpc's errors
            raise MilvusUnavailable(f"Milvus at {uri} cannot be used: {exc}") from exc
        self._label_lock = threading.Lock()
        self._last_label = 0
        log.info(
            "item index on Milvus at %s, collection %s: %d items",
            uri,
            self._items,
            self.count(),
        )

    # --- set-up -----------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return identity(self.d, self.fingerprint, self.model)

    def _open_or_create(self) -> None:
        from pymilvus import DataType

        client = self._client
        if client.has_collection(self._items):
            properties = client.describe_collection(self._items).get("properties") or {}
            try:
                recorded = json.loads(properties.get(IDENTITY, "{}"))
            except ValueError:
                recorded = {}
            if recorded != self._identity():
                count = int(client.get_collection_stats(self._items).get("row_count", 0))
                if count:
                    raise ModelMismatch(
                        f"Milvus collection {self._items} at {self.uri} holds {count} vectors of "
                        f"{recorded or 'an unknown model'}, not of {self._identity()}: run "
                        "`resnet-serve index reindex`, or choose another "
                        "RESNET_SERVE_MILVUS_COLLECTION_PREFIX"
                    )
                client.drop_collection(self._items)  # empty: adopt the new model
                client.drop_collection(self._images)
        if not client.has_collection(self._items):
            create_items_collection(client, self._items, self.d, self._identity())
        if not client.has_collection(self._images):
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=_ID_CHARS + 16)
            schema.add_field("item", DataType.VARCHAR, max_length=_ID_CHARS)
            schema.add_field("part", DataType.INT64)
            schema.add_field("data", DataType.VARCHAR, max_length=_IMAGE_PART_CHARS)
            schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index("placeholder", metric_type="L2", index_type="AUTOINDEX")
            client.create_collection(
                self._images, schema=schema, index_params=index, consistency_level=_STRONG
            )
        self.load()

    def load(self) -> None:
        """Load both collections for reads (a reopened or restarted Milvus holds them released)."""
        for name in (self._items, self._images):
            self._client.load_collection(name)

    # --- writes -----------------------------------------------------------------------------

    @_unavailable_when_milvus_fails
    def put(
        self, item_id: str, vector: np.ndarray, metadata: dict[str, Any], image: bytes | None
    ) -> bool:
        """Add or replace; acknowledged (and visible to every reader) when it returns. True
        if the id was new."""
        created = self.get(item_id) is None
        self._delete_image(item_id)
        if image is not None:
            self._put_image(item_id, image)
        row = {
            "id": item_id,
            "vector": np.asarray(vector, np.float32).tolist(),
            "metadata": metadata,
            "label": self._next_label(),
            "added_at": time.time(),
        }
        self._client.upsert(self._items, [row])
        return created

    @_unavailable_when_milvus_fails
    def add_many(self, items: list[tuple[str, np.ndarray, str]]) -> None:
        """Add new items without images (id, vector, metadata as JSON text) in one upsert:
        an import, as index.store.ItemStore.add_many."""
        rows = [
            {
                "id": item_id,
                "vector": np.asarray(vector, np.float32).tolist(),
                "metadata": json.loads(metadata),
                "label": self._next_label(),
                "added_at": time.time(),
            }
            for item_id, vector, metadata in items
        ]
        self._client.upsert(self._items, rows)

    @_unavailable_when_milvus_fails
    def existing(self, ids: list[str]) -> set[str]:
        """Which of `ids` are stored (as index.store.ItemStore.existing)."""
        found: set[str] = set()
        for start in range(0, len(ids), _PAGE):
            rows = self._client.get(
                self._items, ids=ids[start : start + _PAGE], output_fields=["id"]
            )
            found.update(row["id"] for row in rows)
        return found

    @_unavailable_when_milvus_fails
    def delete(self, item_id: str) -> bool:
        existed = self.get(item_id) is not None
        self._client.delete(self._items, ids=[item_id])
        self._delete_image(item_id)
        return existed

    def _next_label(self) -> int:
        """Labels order writes (a model version's copy follows them): microseconds since the
        epoch, strictly increasing within this process."""
        with self._label_lock:
            self._last_label = max(self._last_label + 1, time.time_ns() // 1000)
            return self._last_label

    def _put_image(self, item_id: str, image: bytes) -> None:
        text = base64.b64encode(image).decode()
        parts = [
            text[start : start + _IMAGE_PART_CHARS]
            for start in range(0, len(text), _IMAGE_PART_CHARS)
        ] or [""]
        rows = [
            {
                "key": f"{item_id}\x1f{number}",
                "item": item_id,
                "part": number,
                "data": part,
                "placeholder": [0.0, 0.0],
            }
            for number, part in enumerate(parts)
        ]
        self._client.upsert(self._images, rows)

    def _delete_image(self, item_id: str) -> None:
        self._client.delete(self._images, filter=f"item == {string_literal(item_id)}")

    # --- reads ------------------------------------------------------------------------------

    @_unavailable_when_milvus_fails
    def get(self, item_id: str) -> StoredItem | None:
        rows = self._client.get(
            self._items, ids=[item_id], output_fields=["metadata", "label", "added_at"]
        )
        if not rows:
            return None
        row = rows[0]
        return StoredItem(item_id, int(row["label"]), dict(row["metadata"]), row["added_at"])

    @_unavailable_when_milvus_fails
    def image(self, item_id: str) -> bytes | None:
        return read_image(self._client, self._images, item_id)

    @_unavailable_when_milvus_fails
    def vector(self, item_id: str) -> np.ndarray | None:
        rows = self._client.get(self._items, ids=[item_id], output_fields=["vector"])
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    @_unavailable_when_milvus_fails
    def search(
        self,
        vector: np.ndarray,
        k: int,
        exclude: str | None = None,
        where: Filter | None = None,
    ) -> list[SearchHit]:
        """The k nearest items (matching `where`, when given), best first."""
        expression = "" if where is None else milvus_expression(where)
        if exclude is not None:
            not_it = f"id != {string_literal(exclude)}"
            expression = f"({expression}) and {not_it}" if expression else not_it
        (found,) = self._client.search(
            self._items,
            data=[np.asarray(vector, np.float32).tolist()],
            limit=k,
            filter=expression,
            output_fields=["metadata"],
            search_params={"metric_type": "COSINE"},
        )
        return [
            SearchHit(hit["id"], float(hit["distance"]), dict(hit["entity"]["metadata"]))
            for hit in found
        ]

    def similar(self, item_id: str, k: int, where: Filter | None = None) -> list[SearchHit] | None:
        """Nearest items to a stored item (itself excluded); None if the id is unknown."""
        vector = self.vector(item_id)
        return None if vector is None else self.search(vector, k, exclude=item_id, where=where)

    @_unavailable_when_milvus_fails
    def count(self) -> int:
        return int(self._client.get_collection_stats(self._items).get("row_count", 0))

    def stats(self) -> CollectionStats:
        return CollectionStats(
            count=self.count(),
            d=self.d,
            kind="milvus",
            factory="milvus",
            reason=f"INDEX_ENGINE=milvus: collection {self._items} at {self.uri}",
            nprobe=0,
            fingerprint=self.fingerprint,
            model=self.model,
            tombstones=0,
            changes_since_snapshot=0,
            building=None,
            last_build_error=None,
            index_bytes_per_item=0,  # in Milvus, not in this process
            store_vector_bytes=4 * self.d,
            filtered="Milvus filter expressions over the metadata JSON field",
            filtered_exact_up_to=0,
        )

    # --- what another model version's copy needs (index.store.ItemStore's names) -------------

    @property
    def store(self) -> "MilvusCollection":
        return self

    @_unavailable_when_milvus_fails
    def written_after(self, label: int, limit: int) -> list[tuple[int, str]]:
        rows = [(int(row["label"]), row["id"]) for row in self._rows(f"label > {int(label)}")]
        return sorted(rows)[:limit]

    @_unavailable_when_milvus_fails
    def max_label(self) -> int:
        return max((int(row["label"]) for row in self._rows("")), default=0)

    @_unavailable_when_milvus_fails
    def ids(self, up_to: int | None = None) -> set[str]:
        expression = "" if up_to is None else f"label <= {int(up_to)}"
        return {row["id"] for row in self._rows(expression)}

    def _rows(self, expression: str) -> Iterator[dict[str, Any]]:
        iterator = self._client.query_iterator(
            self._items, batch_size=_PAGE, filter=expression, output_fields=["id", "label"]
        )
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    def close(self) -> None:
        self._client.close()

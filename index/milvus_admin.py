"""Work on a Milvus item index as a whole, outside the requests: the live version's aliases,
dropping a version's collections, and re-embedding the items for another model.

Aliases: `{root}_live_items` and `{root}_live_images` name the live model version's
collections. Activation and rollback move them with ALTER ALIAS, which Milvus applies
atomically, so a reader outside the service (a batch job, another deployment, a dashboard)
that searches the alias sees one version's vectors or the next's, never a mixture. (The
service itself resolves a request's version once and searches that version's collection.)

Reindex: the images collection does not depend on the model and stays. The items are
written anew into `{prefix}_items_next`, made for the new model's dimension; that collection
then takes the items collection's name (its aliases move with it). Until the rename the old
collection still records the old model, so the service keeps refusing to open it, and an
interrupted run is simply run again.
"""

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from index.milvus_collection import (
    IDENTITY,
    MilvusUnavailable,
    collection_names,
    create_items_collection,
    identity,
    read_image,
)
from index.milvus_filters import string_literal

log = logging.getLogger(__name__)

_PAGE = 256  # items re-embedded at a time

# Given ids and their images (None: stored without one), a vector for each, or None for one
# that cannot be embedded (the caller reports why).
Embedder = Callable[[list[str], list[bytes | None]], list[np.ndarray | None]]


@contextmanager
def connected(uri: str, token: str | None) -> Iterator[Any]:
    """A pymilvus client for the block; Milvus's failures in it (down, refusing) are
    MilvusUnavailable naming the URI, anything else passes through."""
    from pymilvus import MilvusClient  # the milvus extra
    from pymilvus.exceptions import MilvusException

    try:
        client = MilvusClient(uri, token=token or "")
    except Exception as exc:  # pymilvus raises its own and grpc's errors
        raise MilvusUnavailable(f"Milvus at {uri} cannot be used: {exc}") from exc
    try:
        yield client
    except MilvusException as exc:
        raise MilvusUnavailable(f"Milvus at {uri}: {exc}") from exc
    finally:
        client.close()


def live_alias_names(root: str) -> tuple[str, str]:
    return collection_names(f"{root}_live")


def _aliases(client: Any, collection: str = "") -> list[str]:
    return list(client.list_aliases(collection_name=collection)["aliases"])


def point_live_aliases(client: Any, root: str, prefix: str) -> None:
    """Make `{root}_live_*` name the collections of the index with this prefix."""
    for alias, collection in zip(live_alias_names(root), collection_names(prefix), strict=True):
        if alias in _aliases(client):
            client.alter_alias(collection_name=collection, alias=alias)
        else:
            client.create_alias(collection_name=collection, alias=alias)
    log.info("Milvus aliases %s_live_* name %s_*", root, prefix)


def recorded_identity(client: Any, prefix: str) -> dict[str, Any] | None:
    """The model an index's items collection records (index.milvus_collection.identity), or
    None when there is no such collection."""
    items = collection_names(prefix)[0]
    if not client.has_collection(items):
        return None
    properties = client.describe_collection(items).get("properties") or {}
    return dict(json.loads(properties.get(IDENTITY, "{}")))


def drop_index(client: Any, prefix: str) -> None:
    """Drop an index's collections (a removed model version's)."""
    for name in collection_names(prefix):
        if client.has_collection(name):
            client.drop_collection(name)


def reindex_items(
    client: Any,
    prefix: str,
    *,
    d: int,
    fingerprint: str,
    model: str,
    embed: Embedder,
    on_progress: Callable[[int], object],
) -> tuple[int, list[str]]:
    """Re-embed every item with the model described; returns how many were re-embedded and
    the ids that could not be (removed, with their images)."""
    items, images = collection_names(prefix)
    following = f"{items}_next"
    if not client.has_collection(items):
        if client.has_collection(following):  # interrupted between the drop and the rename
            client.rename_collection(following, items)
        return 0, []
    if client.has_collection(following):
        client.drop_collection(following)  # an interrupted run: start again
    create_items_collection(client, following, d, identity(d, fingerprint, model))
    for name in (items, images, following):
        client.load_collection(name)
    added, removed = 0, []
    iterator = client.query_iterator(
        items, batch_size=_PAGE, filter="", output_fields=["id", "metadata", "label", "added_at"]
    )
    try:
        while page := iterator.next():
            ids = [row["id"] for row in page]
            vectors = embed(ids, [read_image(client, images, item_id) for item_id in ids])
            rows = [
                row | {"vector": np.asarray(vector, np.float32).tolist()}
                for row, vector in zip(page, vectors, strict=True)
                if vector is not None
            ]
            if rows:
                client.insert(following, rows)
            added += len(rows)
            removed += [item_id for item_id, v in zip(ids, vectors, strict=True) if v is None]
            on_progress(len(page))
    finally:
        iterator.close()
    aliases = _aliases(client, items)
    for alias in aliases:
        client.drop_alias(alias)
    client.drop_collection(items)
    client.rename_collection(following, items)
    for alias in aliases:
        client.create_alias(collection_name=items, alias=alias)
    client.load_collection(items)
    for item_id in removed:
        client.delete(images, filter=f"item == {string_literal(item_id)}")
    return added, removed

"""Bulk index work outside the HTTP service: add a folder of images, re-embed stored images."""

import logging
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from index.collection import CollectionFiles, hold_process_lock
from index.store import ItemStore
from service.errors import InvalidInput, ServiceError
from service.items.item_ids import MAX_ID_LENGTH, validate_item_id
from service.items.search_index import Engine, milvus_token, milvus_uri
from service.model.model_io import ModelOutputs
from service.model.runtime import ModelRuntime
from service.settings import Settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
_NOT_IN_IDS = re.compile(r"[^A-Za-z0-9._~:@+=/-]")
T = TypeVar("T")


@dataclass
class BulkReport:
    added: int = 0
    already_present: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path or id, why)

    def summary(self) -> str:
        lines = [
            f"added {self.added}, already present {self.already_present}, failed {len(self.failed)}"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.failed]
        return "\n".join(lines)


def item_id_for(relative: Path) -> str:
    """The id of a file under the folder: its relative path, unsafe characters as '_'."""
    return _NOT_IN_IDS.sub("_", relative.as_posix())[:MAX_ID_LENGTH]


def add_folder(
    runtime: ModelRuntime, collection: Engine, root: Path, settings: Settings, progress: bool
) -> BulkReport:
    """Embed every image file under `root`; files already in the index are skipped (resumable).

    Each item is durable once added, so an interrupted run continues where it stopped.
    """
    report = BulkReport()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    todo: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for path in files:
        relative = path.relative_to(root)
        item_id = item_id_for(relative)
        try:
            validate_item_id(item_id)
        except InvalidInput as exc:
            report.failed.append((str(relative), str(exc)))
            continue
        if item_id in seen:
            report.failed.append((str(relative), f"same id {item_id!r} as {seen[item_id]}"))
            continue
        seen[item_id] = relative
        if collection.get(item_id) is not None:
            report.already_present += 1
        else:
            todo.append((item_id, path))
    bar = tqdm(total=len(files), initial=len(files) - len(todo), disable=not progress, unit="img")
    with bar, ThreadPoolExecutor(settings.decode_threads) as pool:
        for chunk in _chunks(todo, runtime.batch_size):
            datas = list(pool.map(_read_bytes, [path for _, path in chunk]))
            ids = [item_id for item_id, _ in chunk]
            vectors = _embed(runtime, pool, datas, ids, report)
            for item_id, data, vector in zip(ids, datas, vectors, strict=True):
                if vector is not None and data is not None:
                    image = data if settings.index_keep_images else None
                    collection.put(item_id, vector, {"path": str(seen[item_id])}, image)
                    report.added += 1
            bar.update(len(chunk))
    return report


def reindex(runtime: ModelRuntime, settings: Settings, progress: bool) -> BulkReport:
    """Re-embed every stored image with the configured model, then adopt its fingerprint.

    Items stored without their image cannot be re-embedded and are removed (reported). Safe
    to re-run after an interruption: the index keeps refusing the new model until the end.
    """
    if settings.index_engine == "milvus":
        return _reindex_milvus(runtime, settings, progress)
    report = BulkReport()
    files = CollectionFiles(settings.index_dir)
    files.directory.mkdir(parents=True, exist_ok=True)
    spec = runtime.spec
    with hold_process_lock(files.lock):
        store = ItemStore(
            files.store,
            spec.embedding_dim,
            spec.fingerprint,
            spec.model_id,
            adopt_model=True,
        )
        try:
            for item_id in store.ids_without_image():
                store.delete(item_id)
                report.failed.append((item_id, "no stored image to re-embed; removed"))
            ids = store.image_ids()
            with (
                tqdm(total=len(ids), disable=not progress, unit="img") as bar,
                ThreadPoolExecutor(settings.decode_threads) as pool,
            ):
                for chunk in _chunks(ids, runtime.batch_size):
                    datas = [store.image(item_id) for item_id in chunk]
                    vectors = _embed(runtime, pool, datas, chunk, report)
                    for item_id, vector in zip(chunk, vectors, strict=True):
                        if vector is None:
                            store.delete(item_id)
                        else:
                            store.replace_vector(item_id, vector)
                            report.added += 1
                    bar.update(len(chunk))
            store.set_model(spec.fingerprint, spec.model_id)
        finally:
            store.close()
    return report


def _reindex_milvus(runtime: ModelRuntime, settings: Settings, progress: bool) -> BulkReport:
    """The same on Milvus (index.milvus_admin.reindex_items: a new items collection)."""
    from index.milvus_admin import connected, reindex_items

    report = BulkReport()
    spec = runtime.spec

    def embed(ids: list[str], datas: list[bytes | None]) -> list[np.ndarray | None]:
        vectors: list[np.ndarray | None] = [None] * len(ids)
        stored = [i for i, data in enumerate(datas) if data is not None]
        for i in set(range(len(ids))) - set(stored):
            report.failed.append((ids[i], "no stored image to re-embed; removed"))
        for chunk in _chunks(stored, runtime.batch_size):
            embedded = _embed(
                runtime, pool, [datas[i] for i in chunk], [ids[i] for i in chunk], report
            )
            for i, vector in zip(chunk, embedded, strict=True):
                vectors[i] = vector
        return vectors

    with (
        connected(milvus_uri(settings), milvus_token(settings)) as client,
        tqdm(disable=not progress, unit="img") as bar,
        ThreadPoolExecutor(settings.decode_threads) as pool,
    ):
        report.added, _ = reindex_items(
            client,
            settings.milvus_collection_prefix,
            d=spec.embedding_dim,
            fingerprint=spec.fingerprint,
            model=spec.model_id,
            embed=embed,
            on_progress=bar.update,
        )
    return report


def _embed(
    runtime: ModelRuntime,
    pool: ThreadPoolExecutor,
    datas: Sequence[bytes | None],
    names: Sequence[str],
    report: BulkReport,
) -> list[np.ndarray | None]:
    """Embeddings for the images that decode; failures are added to the report as None."""
    vectors: list[np.ndarray | None] = []
    for name, result in zip(names, embed_batch(runtime, pool, datas), strict=True):
        if isinstance(result, str):
            report.failed.append((name, result))
            vectors.append(None)
        else:
            vectors.append(result)
    return vectors


def embed_batch(
    runtime: ModelRuntime, pool: ThreadPoolExecutor, datas: Sequence[bytes | None]
) -> list[np.ndarray | str]:
    """One model call for a batch of uploads (decoded in `pool`): each image's embedding, or
    why it could not be embedded (unreadable, corrupt, too large)."""
    decoded = list(pool.map(_preprocess_or_error, [runtime] * len(datas), datas))
    good = [image for image in decoded if isinstance(image, np.ndarray)]
    predictions = iter(runtime.predict_batch(good) if good else [])
    embedded: list[np.ndarray | str] = []
    for image in decoded:
        result = next(predictions) if isinstance(image, np.ndarray) else image
        embedded.append(result.embedding if isinstance(result, ModelOutputs) else str(result))
    return embedded


def _preprocess_or_error(runtime: ModelRuntime, data: bytes | None) -> np.ndarray | str:
    if data is None:
        return "unreadable file"
    try:
        return runtime.preprocessor(data)
    except ServiceError as exc:  # corrupt, truncated, too large, not an image
        return str(exc)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

"""`resnet-serve index import-vectors FILE.parquet --fingerprint FP`: embeddings made elsewhere.

The file has a string column `id`, a list-of-float column `vector` and optionally a string
column `metadata` (a JSON object per row). It is read a batch at a time (memory does not grow
with the file); every batch is one durable transaction, so an interrupted import is resumed
by running it again: ids already stored are skipped. Rows that are wrong (a bad id, a vector
of another length, NaN, all zeros, metadata that is not a JSON object) are skipped and
reported; the rest go in. pyarrow is imported here only.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from index.collection import CollectionFiles, hold_process_lock
from index.store import ItemStore
from service import extras
from service.errors import InvalidInput
from service.items.item_ids import validate_item_id

log = logging.getLogger(__name__)

BATCH_ROWS = 8192
REPORTED_FAILURES = 100  # the first ones in detail; the rest are counted


class ImportRefused(RuntimeError):
    """The file cannot go into this index at all (wrong model, dimension or columns)."""


@dataclass
class ImportReport:
    rows: int = 0
    added: int = 0
    already_present: int = 0
    failed: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, why), the first ones

    def fail(self, row: int, why: str) -> None:
        self.failed += 1
        if len(self.failures) < REPORTED_FAILURES:
            self.failures.append((row, why))

    def summary(self) -> str:
        lines = [
            f"read {self.rows} rows: added {self.added}, already present "
            f"{self.already_present}, skipped {self.failed}"
        ]
        lines += [f"  skipped row {row}: {why}" for row, why in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  ... and {self.failed - len(self.failures)} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class ExpectedModel:
    fingerprint: str
    d: int
    model: str


class ImportTarget(Protocol):
    """Where imported rows go: the FAISS engine's store, or a Milvus collection."""

    def existing(self, ids: list[str]) -> set[str]: ...

    def add_many(self, items: list[tuple[str, np.ndarray, str]]) -> None: ...


def import_vectors(
    path: Path,
    fingerprint: str,
    expected: ExpectedModel,
    index_dir: Path,
    progress: bool,
    into: ImportTarget | None = None,
) -> ImportReport:
    """Add the file's vectors to the store in `index_dir` (the service stopped), or `into`
    another engine's collection (Milvus: the service may keep running)."""
    try:
        import pyarrow.parquet as pq  # only this command needs pyarrow
    except ImportError as exc:
        raise ImportRefused(extras.missing("parquet", "import-vectors (Parquet)")) from exc

    if fingerprint != expected.fingerprint:
        raise ImportRefused(
            f"--fingerprint {fingerprint} is not the fingerprint of the index's model "
            f"{expected.model} ({expected.fingerprint}, as GET /v1/index reports): vectors of "
            "another model would make nonsense neighbours. Embed with that model, or point "
            "RESNET_SERVE_DATA_DIR at another index."
        )
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ImportRefused(f"{path} is not a readable Parquet file: {exc}") from exc
    columns = _columns(parquet.schema_arrow, path)
    if into is not None:
        return _import_all(parquet, columns, into, expected.d, progress)
    files = CollectionFiles(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_process_lock(files.lock)
    try:
        store = ItemStore(files.store, expected.d, expected.fingerprint, expected.model)
        try:
            return _import_all(parquet, columns, store, expected.d, progress)
        finally:
            store.close()
    finally:
        lock.close()


def _import_all(
    parquet: Any, columns: list[str], target: ImportTarget, d: int, progress: bool
) -> ImportReport:
    report = ImportReport()
    with tqdm(total=parquet.metadata.num_rows, disable=not progress, unit="vec") as bar:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            _import_batch(batch, target, d, report)
            bar.update(batch.num_rows)
    return report


def _columns(schema: Any, path: Path) -> list[str]:
    import pyarrow as pa

    names = set(schema.names)
    missing = {"id", "vector"} - names
    if missing:
        raise ImportRefused(
            f"{path} lacks the column(s) {', '.join(sorted(missing))}: it needs a string column "
            "`id`, a list-of-float column `vector` and optionally a string column `metadata`"
        )
    if not pa.types.is_string(schema.field("id").type) and not pa.types.is_large_string(
        schema.field("id").type
    ):
        raise ImportRefused(f"column `id` of {path} is {schema.field('id').type}, not string")
    vector_type = schema.field("vector").type
    if not (
        pa.types.is_list(vector_type)
        or pa.types.is_large_list(vector_type)
        or pa.types.is_fixed_size_list(vector_type)
    ) or not pa.types.is_floating(vector_type.value_type):
        raise ImportRefused(f"column `vector` of {path} is {vector_type}, not a list of floats")
    if "metadata" in names:
        metadata_type = schema.field("metadata").type
        if not (pa.types.is_string(metadata_type) or pa.types.is_large_string(metadata_type)):
            raise ImportRefused(f"column `metadata` of {path} is {metadata_type}, not string")
        return ["id", "vector", "metadata"]
    return ["id", "vector"]


def _import_batch(batch: Any, store: ImportTarget, d: int, report: ImportReport) -> None:
    import pyarrow.compute as pc

    first_row = report.rows
    report.rows += batch.num_rows
    ids = batch.column("id").to_pylist()
    vectors_column = batch.column("vector")
    lengths = pc.list_value_length(vectors_column).fill_null(-1).to_numpy()
    if report.rows == batch.num_rows and len(lengths) and (lengths >= 0).any():
        found = int(lengths[lengths >= 0][0])
        if found != d:  # the first batch tells: refuse before anything is written
            raise ImportRefused(
                f"the file's vectors have {found} dimensions; the index holds {d}-dimensional "
                "vectors of its model"
            )
    values = vectors_column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    metadata_column = (
        batch.column("metadata").to_pylist() if "metadata" in batch.schema.names else None
    )
    present = store.existing([i for i in ids if isinstance(i, str)])
    rows: list[tuple[str, np.ndarray, str]] = []
    seen: set[str] = set()
    offset = 0
    for position, item_id in enumerate(ids):
        length = int(lengths[position])
        vector = values[offset : offset + max(length, 0)]
        offset += max(length, 0)
        row = first_row + position
        if item_id in present:
            report.already_present += 1
            continue
        why = _problem(item_id, vector, d, seen)
        metadata = "{}"
        if why is None and metadata_column is not None and metadata_column[position]:
            metadata, why = _metadata(metadata_column[position])
        if why is not None:
            report.fail(row, why)
            continue
        seen.add(item_id)
        rows.append((item_id, vector / np.linalg.norm(vector), metadata))
    if rows:
        store.add_many(rows)
        report.added += len(rows)


def _problem(item_id: object, vector: np.ndarray, d: int, seen: set[str]) -> str | None:
    if not isinstance(item_id, str):
        return "no id"
    try:
        validate_item_id(item_id)
    except InvalidInput as exc:
        return f"id {item_id!r}: {exc}"
    if item_id in seen:
        return f"id {item_id!r} is on an earlier row too"
    if len(vector) != d:
        return f"vector has {len(vector)} values, not {d}"
    if not np.isfinite(vector).all():
        return "vector has NaN or infinite values"
    if not np.any(vector):
        return "vector is all zeros (it has no direction)"
    return None


def _metadata(text: str) -> tuple[str, str | None]:
    try:
        value = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        return "{}", f"metadata is not valid JSON: {exc}"
    if not isinstance(value, dict):
        return "{}", "metadata is not a JSON object"
    return json.dumps(value), None

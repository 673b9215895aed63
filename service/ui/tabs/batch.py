"""The Batch tab: classify many images, with a table to download as CSV and JSON."""

import asyncio
import csv
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from service.ui.api import ApiError, ServiceApi

BATCH_COLUMNS = ["file", "top-1", "score", "error", "top-5"]  # error before the long column
_BATCH_CONCURRENCY = 4  # images of a batch in flight at once: enough to fill model batches


async def _batch_row(api: ServiceApi, path: Path) -> list[Any]:
    name = path.name
    try:
        answer = (await api.post_image("/v1/classify", path, top_k=5)).json()
    except ApiError as exc:
        return [name, "", "", f"{exc.status} {exc.code}: {exc}", ""]
    predictions = answer["predictions"]
    top5 = "; ".join(f"{p['label']} {p['score']:.3f}" for p in predictions)
    return [name, predictions[0]["label"], round(predictions[0]["score"], 4), "", top5]


_KEPT_EXPORTS = 32  # the newest batch downloads; older ones are removed as new ones come


def _export(rows: list[list[Any]], directory: Path) -> tuple[Path, Path]:
    """The batch table as CSV and JSON files the page offers for download."""
    older = sorted(directory.iterdir(), key=lambda path: path.stat().st_mtime)
    for stale in older[: max(0, len(older) - _KEPT_EXPORTS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    export = Path(tempfile.mkdtemp(dir=directory))
    csv_path, json_path = export / "classified.csv", export / "classified.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BATCH_COLUMNS)
        writer.writerows(rows)
    records = [dict(zip(BATCH_COLUMNS, row, strict=True)) for row in rows]
    json_path.write_text(json.dumps(records, indent=2))
    return csv_path, json_path


def build(api: ServiceApi, exports: Path) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    batch_files = gr.File(file_count="multiple", label="Images (drop many)", elem_id="batch-files")
    batch_button = gr.Button("Classify all", variant="primary")
    batch_status = gr.Markdown(elem_id="batch-status")
    batch_table = gr.Dataframe(headers=BATCH_COLUMNS, label="Results", elem_id="batch-table")
    with gr.Row():
        csv_out = gr.File(label="CSV", elem_id="batch-csv")
        json_out = gr.File(label="JSON", elem_id="batch-json")

    async def classify_all(
        files: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> AsyncIterator[tuple[str, list[list[Any]], Any, Any]]:
        paths = [Path(f) for f in files or []]
        if not paths:
            raise gr.Error("Drop some images first.")
        rows: list[list[Any]] = []
        pending = list(paths)
        while pending:
            chunk, pending = pending[:_BATCH_CONCURRENCY], pending[_BATCH_CONCURRENCY:]
            rows += await asyncio.gather(*(_batch_row(api, path) for path in chunk))
            progress(len(rows) / len(paths), desc="Classifying")
            yield f"{len(rows)} of {len(paths)} done", rows, None, None
        csv_path, json_path = _export(rows, exports)
        failed = sum(1 for row in rows if row[3])
        yield f"Done: {len(rows)} images, {failed} failed.", rows, str(csv_path), str(json_path)

    batch_button.click(classify_all, batch_files, [batch_status, batch_table, csv_out, json_out])

"""The web page at /ui: a Gradio app over the service's own API, mounted in the same process.

Tabs: Model, Classify (with Grad-CAM), Feature maps, Similarity, Search, Batch. Every tab calls
the HTTP API in process (service.ui.api), so the page sees exactly what a client would, and an
error the API answers is shown as its message, never as a stack trace. Gradio is imported only
here: a deployment with RESNET_SERVE_UI=false does not load it.
"""

import asyncio
import atexit
import csv
import functools
import hmac
import io
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from fastapi import FastAPI
from PIL import Image

from service.process_dirs import temporary_dir
from service.ui.api import ApiError, ServiceApi

P = ParamSpec("P")
T = TypeVar("T")
BATCH_COLUMNS = ["file", "top-1", "score", "error", "top-5"]  # error before the long column
_BATCH_CONCURRENCY = 4  # images of a batch in flight at once: enough to fill model batches


def mount_ui(app: FastAPI, api_key: str | None, path: str = "/ui") -> FastAPI:
    """Mount the page on `app`. No analytics, no calls out: a production box may have no
    internet, and this page must not try.

    With an API key the page opens with a login (any user name, the key as password), and
    its calls to the API carry the key: who can use the page could use the API.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    exports = _exports_directory()
    blocks = build_blocks(ServiceApi(app, api_key), exports)
    mounted: FastAPI = gr.mount_gradio_app(
        app,
        blocks,
        path=path,
        auth=None if api_key is None else functools.partial(_knows_key, api_key),
        auth_message="This service needs its API key: any user name, the key as password.",
        show_error=False,  # only gr.Error messages (the API's own words) reach the page
        allowed_paths=[str(exports)],
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        footer_links=[],
        theme=gr.themes.Default(),  # local fonts: nothing fetched from a font CDN
    )
    _poll_less(blocks)
    return mounted


# Gradio's event queue polls the event loop for work every 1 ms and for progress every 10 ms,
# from start-up, used or not: over 1,000 wake-ups a second and about 3% of a core per idle
# process (each HTTP worker), taking the GIL and CPU from requests and the model. Gradio's own
# values on Windows are fine for a page: a click starts at most 50 ms later.
_QUEUE_POLL_S = 0.05
_PROGRESS_POLL_S = 0.1


def _poll_less(blocks: Any) -> None:
    queue = blocks._queue  # not public API; tests/e2e/test_server.py fails if this stops working
    queue.sleep_when_free = _QUEUE_POLL_S
    queue.progress_update_sleep_when_free = _PROGRESS_POLL_S


def _knows_key(api_key: str, _user: str, password: str) -> bool:
    return hmac.compare_digest(password.encode(), api_key.encode())


def shown(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """An API refusal becomes a readable message in the page (gr.Error)."""
    import gradio as gr

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            raise gr.Error(str(exc), title=f"{exc.status} {exc.code}") from None

    return wrapper


def _progress_words(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    left = progress["seconds_left"]
    eta = f", about {left:.0f} s left" if left is not None else ""
    return f"{progress['done']} of {progress['total']}{eta}"


def _need(image: str | None, what: str = "an image") -> Path:
    import gradio as gr

    if not image:
        raise gr.Error(f"Drop {what} first.")
    return Path(image)


def similarity_words(score: float) -> str:
    """Cosine similarity of two embeddings, in words."""
    bands = (
        (0.9, "near-identical"),
        (0.75, "very similar"),
        (0.5, "similar"),
        (0.3, "loosely related"),
    )
    return next((words for bound, words in bands if score >= bound), "different")


def build_blocks(api: ServiceApi, exports: Path) -> Any:
    import gradio as gr

    with gr.Blocks(title="resnet-serve", analytics_enabled=False) as page:
        gr.Markdown("# resnet-serve")
        with gr.Tab("Model"):
            model_text = gr.Markdown("Loading…", elem_id="model-card")
            refresh = gr.Button("Refresh")
            versions_text = gr.Markdown(elem_id="versions")
            with gr.Row():
                version_choice = gr.Dropdown(
                    label="Ready version", choices=[], elem_id="version-choice"
                )
                make_live = gr.Button("Make live", elem_id="make-live")
        with gr.Tab("Classify"), gr.Row():
            with gr.Column():
                classify_image = gr.Image(
                    type="filepath", label="Image (drop, paste or pick)", elem_id="classify-image"
                )
                top_k = gr.Slider(1, 10, value=5, step=1, label="Top k")
                classify_button = gr.Button("Classify", variant="primary")
            with gr.Column():
                labels = gr.Label(label="Classes", elem_id="classify-labels")
                timings = gr.Markdown(elem_id="classify-timings")
            with gr.Column():
                explain_class = gr.Dropdown(label="Grad-CAM for class", choices=[])
                cam_image = gr.Image(label="Grad-CAM", interactive=False, elem_id="cam-image")
        with gr.Tab("Feature maps"):
            with gr.Row():
                with gr.Column():
                    features_image = gr.Image(
                        type="filepath", label="Image", elem_id="features-image"
                    )
                    stage = gr.Slider(1, 5, value=3, step=1, label="Stage (C1-C5)")
                    channels = gr.Slider(1, 64, value=16, step=1, label="Channels (most active)")
                    features_button = gr.Button("Show feature maps", variant="primary")
                with gr.Column():
                    features_out = gr.Image(
                        label="Feature maps", interactive=False, elem_id="features-out"
                    )
                    features_shape = gr.Markdown(elem_id="features-shape")
            kernels_button = gr.Button("Show first-layer kernels")
            kernels_out = gr.Image(
                label="First-layer kernels", interactive=False, elem_id="kernels-out"
            )
        with gr.Tab("Similarity"):
            with gr.Row():
                first = gr.Image(type="filepath", label="Image A", elem_id="similarity-a")
                second = gr.Image(type="filepath", label="Image B", elem_id="similarity-b")
            compare = gr.Button("Compare", variant="primary")
            similarity_out = gr.Markdown(elem_id="similarity-out")
        with gr.Tab("Search"), gr.Row():
            with gr.Column():
                query = gr.Image(type="filepath", label="Image", elem_id="search-image")
                k = gr.Slider(1, 50, value=8, step=1, label="Results")
                search_filter = gr.Textbox(
                    label="Only items whose metadata match (JSON object, optional)",
                    placeholder='e.g. {"owner": "ann"} or {"owner": ["ann", "bob"]}',
                    elem_id="search-filter",
                )
                search_button = gr.Button("Search the index", variant="primary")
                item_id = gr.Textbox(
                    label="Item id", placeholder="e.g. photos/cat-1", elem_id="item-id"
                )
                metadata = gr.Textbox(
                    label="Metadata (JSON object)", value="{}", elem_id="item-metadata"
                )
                with gr.Row():
                    add_button = gr.Button("Add this image to the index")
                    delete_button = gr.Button("Delete item", variant="stop")
                item_status = gr.Markdown(elem_id="item-status")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="Nearest items",
                    columns=4,
                    height=320,
                    preview=False,
                    object_fit="contain",
                    elem_id="search-gallery",
                )
                results = gr.Dataframe(
                    headers=["id", "score", "metadata"],
                    label="Results",
                    elem_id="search-results",
                )
        with gr.Tab("Batch"):
            batch_files = gr.File(
                file_count="multiple", label="Images (drop many)", elem_id="batch-files"
            )
            batch_button = gr.Button("Classify all", variant="primary")
            batch_status = gr.Markdown(elem_id="batch-status")
            batch_table = gr.Dataframe(
                headers=BATCH_COLUMNS, label="Results", elem_id="batch-table"
            )
            with gr.Row():
                csv_out = gr.File(label="CSV", elem_id="batch-csv")
                json_out = gr.File(label="JSON", elem_id="batch-json")

        @shown
        async def describe() -> str:
            card = (await api.get("/v1/model")).json()
            ready = (await api.get("/readyz")).json()
            index = (await api.get("/v1/index")).json()
            warnings = "".join(f"\n\n> **Warning:** {w}" for w in card["warnings"])
            stages = "\n".join(
                f"| {s['name']} | `{s['module']}` | {' x '.join(map(str, s['shape']))} |"
                for s in card["stages"]
            )
            return (
                f"**{card['model']}**, weights `{card['weights']}`{warnings}\n\n"
                f"| what | value |\n|---|---|\n"
                f"| backend | {card['backend']} ({card['precision']}) |\n"
                f"| device | {card['device']} |\n"
                f"| max batch size | {ready['max_batch_size']} |\n"
                f"| why this backend | {ready['backend_choice']} |\n"
                f"| parameters | {card['parameters']:,} |\n"
                f"| GMACs per image | {card['gmacs']} |\n"
                f"| input | {' x '.join(map(str, card['input_size']))}, "
                f"{card['preprocessing'].get('interpolation')} |\n"
                f"| embedding | {card['embedding_dim']} |\n"
                f"| classes | {card['num_classes']} ({card['labels']}) |\n"
                f"| index | {index['count']} items ({index['kind']}) |\n\n"
                f"| stage | module | output |\n|---|---|---|\n{stages}"
            )

        @shown
        async def classify(image: str | None, count: float) -> tuple[dict[str, float], Any, str]:
            answer = (await api.post_image("/v1/classify", _need(image), top_k=int(count))).json()
            scores = {p["label"]: p["score"] for p in answer["predictions"]}
            choices = [
                (f"{p['label']} ({p['class_id']})", p["class_id"]) for p in answer["predictions"]
            ]
            spent = ", ".join(f"{name} {ms:.0f} ms" for name, ms in answer["timings_ms"].items())
            note = f"cache {answer['cache']}; {spent}"
            return scores, gr.update(choices=choices, value=choices[0][1]), note

        @shown
        async def explain(image: str | None, class_id: int | None) -> Image.Image | None:
            if not image or class_id is None:
                return None
            png = await api.post_image("/v1/explain", Path(image), class_id=class_id)
            return Image.open(io.BytesIO(png.content))

        @shown
        async def feature_maps(
            image: str | None, number: float, count: float
        ) -> tuple[Image.Image, str]:
            answer = await api.post_image(
                "/v1/features", _need(image), stage=int(number), channels=int(count)
            )
            shape = answer.headers["x-feature-shape"].replace(",", " x ")
            return Image.open(io.BytesIO(answer.content)), f"stage C{int(number)}: {shape}"

        @shown
        async def kernels() -> Image.Image:
            return Image.open(io.BytesIO((await api.get("/v1/model/kernels")).content))

        @shown
        async def similarity(a: str | None, b: str | None) -> str:
            images = {"a": _need(a, "image A"), "b": _need(b, "image B")}
            score = (await api.post_images("/v1/similarity", images)).json()["score"]
            return f"**{similarity_words(score)}**: cosine similarity {score:.3f}"

        @shown
        async def search(
            image: str | None, count: float, where: str
        ) -> tuple[list[Any], list[list[Any]]]:
            answer = await api.post_image(
                "/v1/search", _need(image), k=int(count), filter=where.strip() or None
            )
            hits = answer.json()["results"]
            pictures = await asyncio.gather(*(_thumbnail(api, hit["id"]) for hit in hits))
            gallery_items = [
                (picture, f"{hit['id']} · {hit['score']:.3f}")
                for picture, hit in zip(pictures, hits, strict=True)
                if picture is not None
            ]
            rows = [
                [hit["id"], round(hit["score"], 4), json.dumps(hit["metadata"])] for hit in hits
            ]
            return gallery_items, rows

        @shown
        async def add_item(image: str | None, identifier: str, text: str) -> str:
            try:
                fields = json.loads(text or "{}")
            except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
                raise gr.Error(f"Metadata is not valid JSON: {exc}") from None
            if not isinstance(fields, dict):
                raise gr.Error('Metadata must be a JSON object, e.g. {"owner": "ann"}')
            answer = await api.put_item(identifier.strip(), _need(image), fields)
            verb = "Added" if answer.status_code == 201 else "Replaced"
            return f"{verb} **{answer.json()['id']}**."

        @shown
        async def delete_item(identifier: str) -> str:
            await api.delete(f"/v1/items/{identifier.strip()}")
            return f"Deleted **{identifier.strip()}**."

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

        @shown
        async def versions() -> tuple[str, Any]:
            try:
                listed = (await api.get("/v1/models")).json()
            except ApiError as exc:
                if exc.status != 503:  # 503: not managed here (HTTP workers)
                    raise
                return f"Model versions: {exc}", gr.Dropdown(choices=[])
            rows = "\n".join(
                f"| {v['name']}{' (live)' if v['name'] == listed['live'] else ''} | {v['state']} "
                f"| {_progress_words(v['progress']) if v['state'] == 're-embedding' else ''} "
                f"| `{v['weights']}` | {v['reason'] or ''} |"
                for v in listed["versions"]
            )
            ready = [v["name"] for v in listed["versions"] if v["state"] == "ready"]
            table = (
                f"| version | state | progress | weights | reason |\n|---|---|---|---|---|\n{rows}"
            )
            return table, gr.Dropdown(choices=ready, value=None)

        @shown
        async def activate(name: str | None) -> tuple[str, Any]:
            if not name:
                raise gr.Error("Pick a ready version first.")
            await api.post(f"/v1/models/{name}/activate")
            return await versions()

        page.load(describe, outputs=model_text).then(
            versions, outputs=[versions_text, version_choice]
        )
        refresh.click(describe, outputs=model_text).then(
            versions, outputs=[versions_text, version_choice]
        )
        make_live.click(activate, version_choice, [versions_text, version_choice]).then(
            describe, outputs=model_text
        )
        classified = [labels, explain_class, timings]
        picked = [classify_image, explain_class]
        classify_image.upload(classify, [classify_image, top_k], classified).then(
            explain, picked, cam_image
        )
        classify_button.click(classify, [classify_image, top_k], classified).then(
            explain, picked, cam_image
        )
        explain_class.input(explain, picked, cam_image)
        features_button.click(
            feature_maps, [features_image, stage, channels], [features_out, features_shape]
        )
        kernels_button.click(kernels, outputs=kernels_out)
        compare.click(similarity, [first, second], similarity_out)
        search_button.click(search, [query, k, search_filter], [gallery, results])
        add_button.click(add_item, [query, item_id, metadata], item_status)
        delete_button.click(delete_item, item_id, item_status)
        batch_button.click(
            classify_all, batch_files, [batch_status, batch_table, csv_out, json_out]
        )
    return page


async def _thumbnail(api: ServiceApi, item_id: str) -> Image.Image | None:
    try:
        data = (await api.get(f"/v1/items/{item_id}/image")).content
    except ApiError:
        return None  # stored without its image (RESNET_SERVE_INDEX_KEEP_IMAGES=false)
    picture = Image.open(io.BytesIO(data))
    picture.thumbnail((256, 256))
    return picture.convert("RGB")


async def _batch_row(api: ServiceApi, path: Path) -> list[Any]:
    name = path.name
    try:
        answer = (await api.post_image("/v1/classify", path, top_k=5)).json()
    except ApiError as exc:
        return [name, "", "", f"{exc.status} {exc.code}: {exc}", ""]
    predictions = answer["predictions"]
    top5 = "; ".join(f"{p['label']} {p['score']:.3f}" for p in predictions)
    return [name, predictions[0]["label"], round(predictions[0]["score"], 4), "", top5]


def _exports_directory() -> Path:
    """Where this process writes the page's downloads; removed when the process exits, and
    named for it, so a supervisor's start also removes one that a killed worker left."""
    exports = temporary_dir("ui")
    atexit.register(shutil.rmtree, exports, ignore_errors=True)
    return exports


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

"""The Search tab: the items nearest an image (filtered by metadata); adding, deleting items."""

import asyncio
import io
import json
from typing import Any

from PIL import Image

from service.ui.api import ApiError, ServiceApi
from service.ui.handlers import need, shown


async def _thumbnail(api: ServiceApi, item_id: str) -> Image.Image | None:
    try:
        data = (await api.get(f"/v1/items/{item_id}/image")).content
    except ApiError:
        return None  # stored without its image (RESNET_SERVE_INDEX_KEEP_IMAGES=false)
    picture = Image.open(io.BytesIO(data))
    picture.thumbnail((256, 256))
    return picture.convert("RGB")


def build(api: ServiceApi) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    with gr.Row():
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

    @shown
    async def search(
        image: str | None, count: float, where: str
    ) -> tuple[list[Any], list[list[Any]]]:
        answer = await api.post_image(
            "/v1/search", need(image), k=int(count), filter=where.strip() or None
        )
        hits = answer.json()["results"]
        pictures = await asyncio.gather(*(_thumbnail(api, hit["id"]) for hit in hits))
        gallery_items = [
            (picture, f"{hit['id']} · {hit['score']:.3f}")
            for picture, hit in zip(pictures, hits, strict=True)
            if picture is not None
        ]
        rows = [[hit["id"], round(hit["score"], 4), json.dumps(hit["metadata"])] for hit in hits]
        return gallery_items, rows

    @shown
    async def add_item(image: str | None, identifier: str, text: str) -> str:
        try:
            fields = json.loads(text or "{}")
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
            raise gr.Error(f"Metadata is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise gr.Error('Metadata must be a JSON object, e.g. {"owner": "ann"}')
        answer = await api.put_item(identifier.strip(), need(image), fields)
        verb = "Added" if answer.status_code == 201 else "Replaced"
        return f"{verb} **{answer.json()['id']}**."

    @shown
    async def delete_item(identifier: str) -> str:
        await api.delete(f"/v1/items/{identifier.strip()}")
        return f"Deleted **{identifier.strip()}**."

    search_button.click(search, [query, k, search_filter], [gallery, results])
    add_button.click(add_item, [query, item_id, metadata], item_status)
    delete_button.click(delete_item, item_id, item_status)

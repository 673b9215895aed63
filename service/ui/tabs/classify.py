"""The Classify tab: top k classes of an image (and each attached task head's), and Grad-CAM
for the class picked."""

import io
from pathlib import Path
from typing import Any

from PIL import Image

from service.ui.api import ServiceApi
from service.ui.handlers import need, shown


def build(api: ServiceApi) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    with gr.Row():
        with gr.Column():
            classify_image = gr.Image(
                type="filepath", label="Image (drop, paste or pick)", elem_id="classify-image"
            )
            top_k = gr.Slider(1, 10, value=5, step=1, label="Top k")
            classify_button = gr.Button("Classify", variant="primary")
        with gr.Column():
            labels = gr.Label(label="Classes", elem_id="classify-labels")
            heads = gr.Markdown(elem_id="classify-heads")
            timings = gr.Markdown(elem_id="classify-timings")
        with gr.Column():
            explain_class = gr.Dropdown(label="Grad-CAM for class", choices=[])
            cam_image = gr.Image(label="Grad-CAM", interactive=False, elem_id="cam-image")

    @shown
    async def classify(image: str | None, count: float) -> tuple[dict[str, float], Any, str, str]:
        answer = (await api.post_image("/v1/classify", need(image), top_k=int(count))).json()
        scores = {p["label"]: p["score"] for p in answer["predictions"]}
        choices = [
            (f"{p['label']} ({p['class_id']})", p["class_id"]) for p in answer["predictions"]
        ]
        spent = ", ".join(f"{name} {ms:.0f} ms" for name, ms in answer["timings_ms"].items())
        note = f"cache {answer['cache']}; {spent}"
        return scores, gr.update(choices=choices, value=choices[0][1]), heads_text(answer), note

    @shown
    async def explain(image: str | None, class_id: int | None) -> Image.Image | None:
        if not image or class_id is None:
            return None
        png = await api.post_image("/v1/explain", Path(image), class_id=class_id)
        return Image.open(io.BytesIO(png.content))

    classified = [labels, explain_class, heads, timings]
    picked = [classify_image, explain_class]
    classify_image.upload(classify, [classify_image, top_k], classified).then(
        explain, picked, cam_image
    )
    classify_button.click(classify, [classify_image, top_k], classified).then(
        explain, picked, cam_image
    )
    explain_class.input(explain, picked, cam_image)


def heads_text(answer: dict[str, Any]) -> str:
    """Each attached head's top k, one line a head (Markdown); empty without heads."""
    return "\n\n".join(
        f"**{name}**: " + ", ".join(f"{p['label']} {p['score']:.1%}" for p in head["predictions"])
        for name, head in sorted(answer.get("heads", {}).items())
    )

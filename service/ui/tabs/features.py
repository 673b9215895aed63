"""The Feature maps tab: a stage's most active channels, and the first layer's kernels."""

import io

from PIL import Image

from service.ui.api import ServiceApi
from service.ui.handlers import need, shown


def build(api: ServiceApi) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    with gr.Row():
        with gr.Column():
            features_image = gr.Image(type="filepath", label="Image", elem_id="features-image")
            stage = gr.Slider(1, 5, value=3, step=1, label="Stage (C1-C5)")
            channels = gr.Slider(1, 64, value=16, step=1, label="Channels (most active)")
            features_button = gr.Button("Show feature maps", variant="primary")
        with gr.Column():
            features_out = gr.Image(label="Feature maps", interactive=False, elem_id="features-out")
            features_shape = gr.Markdown(elem_id="features-shape")
    kernels_button = gr.Button("Show first-layer kernels")
    kernels_out = gr.Image(label="First-layer kernels", interactive=False, elem_id="kernels-out")

    @shown
    async def feature_maps(
        image: str | None, number: float, count: float
    ) -> tuple[Image.Image, str]:
        answer = await api.post_image(
            "/v1/features", need(image), stage=int(number), channels=int(count)
        )
        shape = answer.headers["x-feature-shape"].replace(",", " x ")
        return Image.open(io.BytesIO(answer.content)), f"stage C{int(number)}: {shape}"

    @shown
    async def kernels() -> Image.Image:
        return Image.open(io.BytesIO((await api.get("/v1/model/kernels")).content))

    features_button.click(
        feature_maps, [features_image, stage, channels], [features_out, features_shape]
    )
    kernels_button.click(kernels, outputs=kernels_out)

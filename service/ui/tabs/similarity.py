"""The Similarity tab: how alike two images are, in numbers and in words."""

from service.ui.api import ServiceApi
from service.ui.handlers import need, shown


def similarity_words(score: float) -> str:
    """Cosine similarity of two embeddings, in words."""
    bands = (
        (0.9, "near-identical"),
        (0.75, "very similar"),
        (0.5, "similar"),
        (0.3, "loosely related"),
    )
    return next((words for bound, words in bands if score >= bound), "different")


def build(api: ServiceApi) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    with gr.Row():
        first = gr.Image(type="filepath", label="Image A", elem_id="similarity-a")
        second = gr.Image(type="filepath", label="Image B", elem_id="similarity-b")
    compare = gr.Button("Compare", variant="primary")
    similarity_out = gr.Markdown(elem_id="similarity-out")

    @shown
    async def similarity(a: str | None, b: str | None) -> str:
        images = {"a": need(a, "image A"), "b": need(b, "image B")}
        score = (await api.post_images("/v1/similarity", images)).json()["score"]
        return f"**{similarity_words(score)}**: cosine similarity {score:.3f}"

    compare.click(similarity, [first, second], similarity_out)

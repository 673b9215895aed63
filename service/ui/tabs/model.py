"""The Model tab: the model card, the versions and a button to make one live."""

from typing import Any

from service.ui.api import ApiError, ServiceApi
from service.ui.handlers import shown


def _progress_words(progress: dict[str, Any] | None) -> str:
    if not progress:
        return ""
    left = progress["seconds_left"]
    eta = f", about {left:.0f} s left" if left is not None else ""
    return f"{progress['done']} of {progress['total']}{eta}"


def build(api: ServiceApi, page: Any) -> None:
    """Its components (inside the page's tab), handlers and wiring."""
    import gradio as gr

    model_text = gr.Markdown("Loading…", elem_id="model-card")
    refresh = gr.Button("Refresh")
    versions_text = gr.Markdown(elem_id="versions")
    with gr.Row():
        version_choice = gr.Dropdown(label="Ready version", choices=[], elem_id="version-choice")
        make_live = gr.Button("Make live", elem_id="make-live")

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
        table = f"| version | state | progress | weights | reason |\n|---|---|---|---|---|\n{rows}"
        return table, gr.Dropdown(choices=ready, value=None)

    @shown
    async def activate(name: str | None) -> tuple[str, Any]:
        if not name:
            raise gr.Error("Pick a ready version first.")
        await api.post(f"/v1/models/{name}/activate")
        return await versions()

    page.load(describe, outputs=model_text).then(versions, outputs=[versions_text, version_choice])
    refresh.click(describe, outputs=model_text).then(
        versions, outputs=[versions_text, version_choice]
    )
    make_live.click(activate, version_choice, [versions_text, version_choice]).then(
        describe, outputs=model_text
    )

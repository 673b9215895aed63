"""The web page at /ui: a Gradio app over the service's own API, mounted in the same process.

Tabs: Model, Classify (with Grad-CAM), Feature maps, Similarity, Search, Batch. Every tab calls
the HTTP API in process (service.ui.api), so the page sees exactly what a client would, and an
error the API answers is shown as its message, never as a stack trace. Gradio is imported only
here: a deployment with RESNET_SERVE_UI=false does not load it.
"""

import atexit
import functools
import hmac
import os
import shutil
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.process_dirs import temporary_dir
from service.ui.api import ServiceApi
from service.ui.tabs import batch, classify, features, model, search, similarity


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


def build_blocks(api: ServiceApi, exports: Path) -> Any:
    import gradio as gr

    with gr.Blocks(title="resnet-serve", analytics_enabled=False) as page:
        gr.Markdown("# resnet-serve")
        with gr.Tab("Model"):
            model.build(api, page)
        with gr.Tab("Classify"):
            classify.build(api)
        with gr.Tab("Feature maps"):
            features.build(api)
        with gr.Tab("Similarity"):
            similarity.build(api)
        with gr.Tab("Search"):
            search.build(api)
        with gr.Tab("Batch"):
            batch.build(api, exports)
    return page


def _exports_directory() -> Path:
    """Where this process writes the page's downloads; removed when the process exits, and
    named for it, so a supervisor's start also removes one that a killed worker left."""
    exports = temporary_dir("ui")
    atexit.register(shutil.rmtree, exports, ignore_errors=True)
    return exports

"""What every tab's handlers share: an API refusal shown as its message, a missing image
asked for."""

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from service.ui.api import ApiError

P = ParamSpec("P")
T = TypeVar("T")


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


def need(image: str | None, what: str = "an image") -> Path:
    import gradio as gr

    if not image:
        raise gr.Error(f"Drop {what} first.")
    return Path(image)

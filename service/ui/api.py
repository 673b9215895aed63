"""The page's way to the service: the HTTP API itself, called in process.

The UI is a client of the API like any other (same validation, same limits, same errors, and
its traffic counts in /metrics), without a network hop: requests go to the ASGI app directly.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI


class ApiError(Exception):
    """The API refused: `message` is its own words, fit to show a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ServiceApi:
    def __init__(self, app: FastAPI, api_key: str | None) -> None:
        # Explanations of a large photo take seconds on a CPU: allow for them.
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://ui.local",
            timeout=120,
            headers={} if api_key is None else {"X-API-Key": api_key},
        )

    async def get(self, path: str, **params: object) -> httpx.Response:
        return _checked(await self._client.get(path, params=_query(params)))

    async def post_image(self, path: str, image: Path, **params: object) -> httpx.Response:
        files = {"file": await _part(image)}
        return _checked(await self._client.post(path, params=_query(params), files=files))

    async def post_images(self, path: str, images: dict[str, Path]) -> httpx.Response:
        files = {field: await _part(image) for field, image in images.items()}
        return _checked(await self._client.post(path, files=files))

    async def put_item(self, item_id: str, image: Path, metadata: dict[str, Any]) -> httpx.Response:
        files = {"file": await _part(image)}
        data = {"metadata": json.dumps(metadata)}
        return _checked(await self._client.put(f"/v1/items/{item_id}", files=files, data=data))

    async def post(self, path: str) -> httpx.Response:
        return _checked(await self._client.post(path))

    async def delete(self, path: str) -> httpx.Response:
        return _checked(await self._client.delete(path))

    async def close(self) -> None:
        await self._client.aclose()


async def _part(image: Path) -> tuple[str, bytes, str]:
    """A multipart file part; Gradio hands the page's uploads over as temporary files."""
    data = await asyncio.to_thread(image.read_bytes)
    return image.name, data, "application/octet-stream"


def _query(params: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in params.items() if value is not None}


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"the service answered {response.status_code}"
    raise ApiError(response.status_code, code, message)

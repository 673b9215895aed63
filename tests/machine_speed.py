"""How fast this machine is right now, for deadlines that scale with it (a loaded CI box)."""

import time

import httpx
from fastapi.testclient import TestClient

from loadtest.common.images import unique_jpegs


def seconds_for_one_new_image(client: httpx.Client | TestClient) -> float:
    """How long the service takes to classify an image that no cache holds."""
    files = {"file": ("new.jpg", next(unique_jpegs(tag="speed")), "image/jpeg")}
    started = time.monotonic()
    assert client.post("/v1/classify", files=files).status_code == 200
    return time.monotonic() - started

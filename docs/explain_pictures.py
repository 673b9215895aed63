"""Make the README's pictures of the inspection endpoints (small JPEG/PNG copies).

    .venv/bin/python docs/explain_pictures.py

Runs the app in process with the offline EfficientNet-Lite0 weights on the packaged coffee
photo and saves what /v1/explain, /v1/features and /v1/model/kernels answer.
"""

import io
import tempfile
from importlib import resources
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

OUT = Path(__file__).parent / "images"


def save_small(png: bytes, name: str, width: int) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((width, width))
    image.save(OUT / name, quality=85)


def main() -> None:
    photo = (resources.files("service.model") / "calibration" / "coffee.jpg").read_bytes()
    settings = Settings(
        model="tf_efficientnet_lite0",
        weights="lite0-package",
        backend="torch",
        precision="fp32",
        max_batch_size=8,
        data_dir=Path(tempfile.mkdtemp()),
    )
    with TestClient(create_app(settings)) as http:
        upload = {"file": ("coffee.jpg", photo, "image/jpeg")}
        save_small(http.post("/v1/explain", files=upload).content, "explain-gradcam.jpg", 360)
        features = http.post("/v1/features", params={"stage": 3, "channels": 16}, files=upload)
        save_small(features.content, "features-c3.jpg", 300)
        (OUT / "kernels.png").write_bytes(http.get("/v1/model/kernels").content)


if __name__ == "__main__":
    main()

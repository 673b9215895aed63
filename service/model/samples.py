"""Real sample images for int8 calibration and the accuracy gate.

Eight public-domain photos ship with the package (calibration/README.md); crops, flips and
scales of them give as many distinct inputs as needed, deterministically per seed.
"""

from importlib import resources

import numpy as np
from PIL import Image, ImageOps


def packaged_photos() -> list[Image.Image]:
    folder = resources.files("service.model") / "calibration"
    return [
        Image.open(entry).convert("RGB")  # type: ignore[arg-type]
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".jpg")
    ]


def sample_images(count: int, seed: int) -> list[Image.Image]:
    """`count` images: each a random crop (35-100% of the area), maybe flipped, rescaled."""
    rng = np.random.default_rng(seed)
    photos = packaged_photos()
    samples = []
    for i in range(count):
        photo = photos[i % len(photos)]
        area = rng.uniform(0.35, 1.0)
        aspect = rng.uniform(0.75, 1.33)
        width = min(photo.width, round(photo.width * np.sqrt(area * aspect)))
        height = min(photo.height, round(photo.height * np.sqrt(area / aspect)))
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        image = photo.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        scale = rng.uniform(0.6, 1.4)
        samples.append(
            image.resize((max(32, round(width * scale)), max(32, round(height * scale))))
        )
    return samples

"""Real photos (scikit-image's bundled CC0 images) encoded the way users send them."""

import io
from functools import cache

import numpy as np
import skimage.data
from PIL import Image

PHOTO_NAMES = ("coffee", "chelsea", "astronaut", "rocket", "motorcycle_left", "motorcycle_right")


@cache
def photo(name: str) -> np.ndarray:
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    array: np.ndarray = getattr(skimage.data, name)()
    return array


def encode(image: Image.Image | np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@cache
def jpeg(name: str) -> bytes:
    return encode(photo(name), "JPEG", quality=92)


def resized_jpeg(name: str, scale: float) -> bytes:
    image = Image.fromarray(photo(name))
    size = (round(image.width * scale), round(image.height * scale))
    return encode(image.resize(size, Image.Resampling.LANCZOS), "JPEG", quality=92)

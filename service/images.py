"""Safe image decoding and model preprocessing (runs in a thread pool, never on the event loop)."""

import io
import math
import struct
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data.transforms_factory import create_transform

from service.errors import InvalidInput, PayloadTooLarge

# Formats a user may upload. Keeping the list closed keeps Pillow's rarer (and riskier)
# decoders, such as EPS through Ghostscript, out of reach.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


def decode_image(data: bytes, *, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Decode upload bytes to an upright RGB image.

    Args:
        max_pixels: width x height above which the image is refused before decoding.
        min_side: the smallest short side the caller needs; large JPEGs are decoded at a
            reduced scale (JPEG draft) that still keeps at least this many pixels.
    """
    if not data:
        raise InvalidInput("the upload is empty")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            f"not a supported image; send one of {', '.join(ALLOWED_FORMATS)}"
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        # A recognised format whose header is damaged (a JPEG segment cut short, say).
        raise InvalidInput(f"image header is corrupt: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput("image has no pixels")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if image.format == "JPEG" and min_side:
        image.draft("RGB", draft_request(width, height, min_side))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise InvalidInput(f"image is corrupt or truncated: {exc}") from exc


def draft_request(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size asked of JPEG draft mode: the image scaled so its short side is min_side."""
    scale = min_side / min(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def draft_factor(width: int, height: int, min_side: int) -> int:
    """How much Pillow's JPEG draft mode shrinks this image while decoding (1, 2, 4 or 8):
    Pillow's own rule, so another decoder can shrink the same way (device_jpeg)."""
    request_width, request_height = draft_request(width, height, min_side)
    fits = min(width // request_width, height // request_height)
    return next(factor for factor in (8, 4, 2, 1) if fits >= factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255 (a white image); rescale instead.
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels carry arbitrary colour; show them on white as viewers do.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        background.alpha_composite(image.convert("RGBA"))
        image = background
    return image.convert("RGB")


class Preprocessor:
    """Bytes -> (H, W, 3) uint8 pixels, resized and cropped as the model's pretrained config says.

    Normalisation (mean, std) is not done here: it is part of the served graph
    (service.model.backend.ServingModule), so only uint8 pixels travel to the model.
    """

    def __init__(self, data_config: dict[str, Any], *, max_pixels: int) -> None:
        steps = create_transform(**data_config, is_training=False).transforms
        # timm's eval transform is resize, crop, to-tensor, normalise: keep the PIL part.
        to_tensor = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
        self.resize_and_crop = steps[:to_tensor]
        _, height, width = data_config["input_size"]
        self.input_size: tuple[int, int] = (height, width)
        crop_pct = data_config.get("crop_pct") or 1.0
        self.min_side = math.ceil(min(height, width) / crop_pct)  # what the resize keeps
        self.max_pixels = max_pixels

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        return (*self.input_size, 3)

    def __call__(self, data: bytes) -> np.ndarray:
        image = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)
        return self.pixels(image)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """A decoded RGB image -> the model's input pixels."""
        for step in self.resize_and_crop:
            image = step(image)
        return np.array(image, dtype=np.uint8)  # writable: torch.from_numpy warns otherwise

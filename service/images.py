"""Safe image decoding and model preprocessing (runs in a thread pool, never on the event loop).

Pillow and numpy only: HTTP workers preprocess, and they do not load torch (about 300 MB and
seconds of start-up each). timm is imported only for an eval transform not done here.
"""

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    # Pillow's own bomb check (an error at twice its limit) follows the setting, so a limit
    # set above Pillow's default (179 M pixels) takes effect; one setting per process.
    Image.MAX_IMAGE_PIXELS = max_pixels
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


DEFAULT_CROP_PCT = 0.875  # timm's, for a config that names none
# timm's interpolation names, as Pillow filters.
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def resized_to_shorter_side(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(shorter) output size: the short side `shorter`, the long side
    scaled and truncated."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def centre_crop_origin(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int]:
    """torchvision's CenterCrop: the crop's left and top edges, rounded half to even."""
    return round((width - crop_w) / 2), round((height - crop_h) / 2)


@dataclass(frozen=True)
class ResizeAndCentreCrop:
    """timm's eval transform in its usual form (crop_mode "center", a square input, crop_pct
    at most 1), done in Pillow with torchvision's rounding, so its pixels are timm's exactly."""

    shorter_side: int
    crop: tuple[int, int]  # height, width
    interpolation: str  # a timm name, a key of PIL_FILTERS

    def __call__(self, image: Image.Image) -> Image.Image:
        size = resized_to_shorter_side(*image.size, self.shorter_side)
        if size != image.size:
            image = image.resize(size, PIL_FILTERS[self.interpolation])
        crop_h, crop_w = self.crop
        left, top = centre_crop_origin(*size, crop_w, crop_h)
        return image.crop((left, top, left + crop_w, top + crop_h))

    def torchvision_steps(self) -> list[Callable[..., Any]]:
        """The same resize and crop as torchvision transforms, for tensors (device_jpeg)."""
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        return [
            Resize(self.shorter_side, interpolation=InterpolationMode(self.interpolation)),
            CenterCrop(self.crop),
        ]


@dataclass(frozen=True)
class TimmEvalSteps:
    """The resize and crop steps of timm's own eval transform, for the configurations that
    ResizeAndCentreCrop does not cover."""

    steps: tuple[Callable[[Image.Image], Image.Image], ...]

    def __call__(self, image: Image.Image) -> Image.Image:
        for step in self.steps:
            image = step(image)
        return image

    def torchvision_steps(self) -> list[Callable[..., Any]]:
        return list(self.steps)


def resize_and_crop_for(data_config: dict[str, Any]) -> ResizeAndCentreCrop | TimmEvalSteps:
    """The PIL part of timm's eval transform for a model's pretrained config."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
    interpolation = data_config.get("interpolation", "bilinear")
    if (
        data_config.get("crop_mode") in (None, "center")
        and height == width
        and crop_pct <= 1.0
        and interpolation in PIL_FILTERS
        and not data_config.get("crop_border_pixels")
    ):
        return ResizeAndCentreCrop(math.floor(height / crop_pct), (height, width), interpolation)
    from timm.data.transforms_factory import create_transform

    steps = create_transform(**data_config, is_training=False).transforms
    # resize, crop, to-tensor, normalise: keep the PIL part.
    to_tensor = next(i for i, step in enumerate(steps) if "ToTensor" in type(step).__name__)
    return TimmEvalSteps(tuple(steps[:to_tensor]))


class Preprocessor:
    """Bytes -> (H, W, 3) uint8 pixels, resized and cropped as the model's pretrained config says.

    Normalisation (mean, std) is not done here: it is part of the served graph
    (service.model.backend.ServingModule), so only uint8 pixels travel to the model.
    """

    def __init__(self, data_config: dict[str, Any], *, max_pixels: int) -> None:
        self.resize_and_crop = resize_and_crop_for(data_config)
        _, height, width = data_config["input_size"]
        self.input_size: tuple[int, int] = (height, width)
        crop_pct = data_config.get("crop_pct") or DEFAULT_CROP_PCT
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
        return np.array(self.resize_and_crop(image), dtype=np.uint8)  # writable, for torch

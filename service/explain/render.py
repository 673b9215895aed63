"""Pictures of what the explainer computed: PNG bytes a person can look at."""

import io
import math

import numpy as np
from PIL import Image

from service.images import Preprocessor, centre_crop_origin, resized_to_shorter_side

OVERLAY_MAX_SIDE = 2048  # the overlay keeps the upload's size, up to this long side
_TILE_GAP = 2


def _colormap(values: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8, matplotlib's jet (blue cold, red hot)."""
    from matplotlib import colormaps  # imported here: only pictures need it

    rgba: np.ndarray = colormaps["jet"](np.clip(values, 0, 1), bytes=True)
    return rgba[..., :3]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def crop_box(
    width: int, height: int, preprocessor: Preprocessor
) -> tuple[float, float, float, float]:
    """Where the model's input lies in an upright image of this size, as fractions of it
    (left, top, right, bottom): torchvision's resize of the short side, then the centre crop."""
    resized_w, resized_h = resized_to_shorter_side(width, height, preprocessor.min_side)
    crop_h, crop_w = preprocessor.input_size
    left, top = centre_crop_origin(resized_w, resized_h, crop_w, crop_h)
    return (
        left / resized_w,
        top / resized_h,
        (left + crop_w) / resized_w,
        (top + crop_h) / resized_h,
    )


def heatmap_overlay(image: Image.Image, heatmap: np.ndarray, preprocessor: Preprocessor) -> bytes:
    """The heatmap blended over the image at its own size (capped at OVERLAY_MAX_SIDE); outside
    the region the model saw, the image is left as it is."""
    image = image.convert("RGB")
    if max(image.size) > OVERLAY_MAX_SIDE:
        image.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
    width, height = image.size
    left, top, right, bottom = crop_box(width, height, preprocessor)
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    size = (max(1, box[2] - box[0]), max(1, box[3] - box[1]))
    heat = np.asarray(
        Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
            size, Image.Resampling.BILINEAR
        )
    )
    region = np.asarray(image.crop(box), np.float32)
    # Cold areas keep the photo readable; hot ones take the colour.
    alpha = (0.25 + 0.5 * np.clip(heat, 0, 1))[..., None]
    blended = (1 - alpha) * region + alpha * _colormap(heat).astype(np.float32)
    image.paste(Image.fromarray(blended.round().astype(np.uint8)), box[:2])
    return _png(image)


def downsample(heatmap: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (size, size) by area averaging: a grid small enough to read as numbers."""
    small = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
        (size, size), Image.Resampling.BOX
    )
    return np.asarray(small)


def tile_grid(tiles: list[np.ndarray], tile_px: int) -> bytes:
    """Square-ish grid of (h, w, 3) uint8 tiles, each scaled to tile_px (nearest: pixels stay
    visible), on a dark background."""
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    step = tile_px + _TILE_GAP
    canvas = Image.new("RGB", (columns * step + _TILE_GAP, rows * step + _TILE_GAP), (24, 24, 24))
    for i, tile in enumerate(tiles):
        picture = Image.fromarray(tile).resize((tile_px, tile_px), Image.Resampling.NEAREST)
        canvas.paste(picture, (_TILE_GAP + (i % columns) * step, _TILE_GAP + (i // columns) * step))
    return _png(canvas)


def feature_tiles(activations: np.ndarray, channels: np.ndarray) -> list[np.ndarray]:
    """The chosen channels of (C, h, w) activations, each scaled to its own range, coloured."""
    tiles = []
    for channel in channels:
        plane = activations[channel]
        low, high = float(plane.min()), float(plane.max())
        tiles.append(_colormap((plane - low) / (high - low) if high > low else plane * 0))
    return tiles


def kernel_tiles(weights: np.ndarray) -> list[np.ndarray]:
    """First-layer filters (out, 3, kh, kw) as RGB tiles, each scaled to its own range."""
    tiles = []
    for kernel in weights:
        rgb = np.transpose(
            kernel[:3] if kernel.shape[0] >= 3 else np.repeat(kernel, 3, 0), (1, 2, 0)
        )
        low, high = float(rgb.min()), float(rgb.max())
        scaled = (rgb - low) / (high - low) if high > low else rgb * 0
        tiles.append((255 * scaled).round().astype(np.uint8))
    return tiles

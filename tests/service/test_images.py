"""Image decoding: modes, orientation, limits and broken files."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms_factory import create_transform

from service.errors import InvalidInput, PayloadTooLarge
from service.images import Preprocessor, decode_image
from service.model.backend import ServingModule
from tests.photos import encode, jpeg, photo

LIMIT = 50_000_000


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size; decoding it for real would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=LIMIT).size == (20, 40)


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    palette = encode(image.convert("P"), "GIF", transparency=0)
    decoded = decode_image(palette, max_pixels=LIMIT)
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (255, 255, 255)


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    decoded = decode_image(encode(image, "PNG"), max_pixels=LIMIT)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)
    assert decoded.getpixel((1, 1)) == (255, 255, 255)


def test_greyscale_becomes_rgb() -> None:
    decoded = decode_image(encode(Image.new("L", (8, 8), 77), "PNG"), max_pixels=LIMIT)
    assert decoded.mode == "RGB" and decoded.getpixel((3, 3)) == (77, 77, 77)


def test_sixteen_bit_greyscale_keeps_its_contrast() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    data = encode(Image.fromarray(ramp), "PNG")
    decoded = np.asarray(decode_image(data, max_pixels=LIMIT))
    assert decoded[0, 0, 0] == 0 and decoded[-1, -1, 0] == 255
    assert 100 < decoded[8, 0, 0] < 160  # mid-grey stays mid-grey, not clipped to white


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")
    red, green, blue = decode_image(data, max_pixels=LIMIT).getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    big = Image.fromarray(photo("coffee")).resize((2400, 1800))
    decoded = decode_image(encode(big, "JPEG"), max_pixels=LIMIT, min_side=256)
    assert 256 <= min(decoded.size) < 1800


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"plain text, not a picture", "not a supported image"),
        (jpeg("coffee")[:2000], "truncated"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a supported image"),
    ],
    ids=["empty", "text", "truncated", "eps-refused"],
)
def test_unusable_bytes_are_invalid_input(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.parametrize("side", [8_000, 30_000], ids=["over-our-limit", "over-pillow-limit"])
def test_pixel_bombs_are_refused_before_decoding(side: int) -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(png_header_only(side, side), max_pixels=LIMIT)


CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def test_preprocessor_follows_the_model_config() -> None:
    pixels = Preprocessor(CONFIG, max_pixels=LIMIT)(jpeg("chelsea"))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    # Normalised as the served graph does it, they are exactly timm's eval transform.
    serving = ServingModule(torch.nn.Identity(), CONFIG["mean"], CONFIG["std"])
    normalised = serving.normalise(torch.from_numpy(pixels[None]))[0].numpy()
    image = decode_image(jpeg("chelsea"), max_pixels=LIMIT, min_side=256)
    expected = create_transform(**CONFIG, is_training=False)(image).numpy()
    np.testing.assert_allclose(normalised, expected, atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"interpolation": "bicubic", "crop_pct": 0.95, "input_size": (3, 288, 288)},
        {"interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": None},
        {"crop_mode": "squash"},  # not ours: timm's own steps
        {"input_size": (3, 224, 192)},  # not ours either
    ],
    ids=["bilinear-224", "bicubic-288", "no-crop", "squash", "not-square"],
)
def test_the_pillow_resize_and_crop_are_timms_to_the_pixel(changes: dict[str, object]) -> None:
    config = CONFIG | changes
    preprocessor = Preprocessor(config, max_pixels=LIMIT)
    steps = create_transform(**config, is_training=False).transforms[:-2]  # no tensor, norm
    rng = np.random.default_rng(7)
    for width, height in [(640, 480), (300, 1000), (225, 224), (224, 224), (1001, 999), (97, 61)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        expected = image
        for step in steps:
            expected = step(expected)
        np.testing.assert_array_equal(preprocessor.pixels(image), np.asarray(expected))


def test_a_damaged_jpeg_header_is_invalid() -> None:
    data = jpeg("chelsea")
    damaged = data[:600] + bytes(b ^ 0xFF for b in data[600:700]) + data[700:]
    with pytest.raises(InvalidInput):
        decode_image(damaged, max_pixels=LIMIT)


def test_truncated_png_is_invalid() -> None:
    data = encode(Image.fromarray(photo("astronaut")), "PNG")
    with pytest.raises(InvalidInput):
        decode_image(io.BytesIO(data).read()[: len(data) // 2], max_pixels=LIMIT)


def test_a_pixel_limit_above_pillows_own_takes_effect() -> None:
    """200 M pixels is past Pillow's default bomb error (179 M): with the setting above it,
    the image is judged by the setting (here: read, and found truncated), not by Pillow."""
    claimed = png_header_only(20_000, 10_000)
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        decode_image(claimed, max_pixels=250_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(claimed, max_pixels=LIMIT)

"""Which uploads the model's device decodes: the header is read here (Pillow, no pixel decoded).

A baseline RGB or greyscale JPEG within the pixel limits and with no EXIF rotation travels
as bytes to the model (service.model.device_jpeg decodes it there); anything else
(progressive, CMYK, rotated, other formats, very large images) goes through Pillow on the
HTTP side as before. Rotated JPEGs stay on the host because decoders disagree on whether they
apply EXIF orientation (TorchCodec's CPU decoder does, undocumented); most are phone photos,
over the device size cap anyway.
"""

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from service.errors import PayloadTooLarge

# Bigger images go through Pillow, which decodes them at a reduced scale (JPEG draft): a full
# decode on the device of a batch of 50-MP images would take gigabytes of GPU memory.
DEVICE_MAX_PIXELS = 12_000_000
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegUpload:
    """An upload the model's device decodes."""

    data: bytes


def inspect_jpeg(data: bytes, *, max_pixels: int) -> JpegUpload | None:
    """A JpegUpload when the device can decode this upload exactly like Pillow would, else None.

    Reads the header only. Raises PayloadTooLarge over `max_pixels`, like the Pillow path.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=("JPEG",))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None  # not a JPEG (or not a sane one): Pillow gives the precise answer
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    progressive = image.info.get("progressive") or image.info.get("progression")
    if image.mode not in ("RGB", "L") or progressive or width * height > DEVICE_MAX_PIXELS:
        return None
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return None  # a broken EXIF block: Pillow's path reports or tolerates it
    return JpegUpload(data) if orientation == 1 else None

"""JPEG decode on the model's device (nvJPEG on CUDA), for when the host cannot keep up.

The HTTP side only reads the header (`inspect_jpeg`: Pillow, no pixel decoded): a baseline
RGB or greyscale JPEG within the pixel limits and with no EXIF rotation travels as bytes;
anything else (progressive, CMYK, rotated, other formats, very large images) goes through
Pillow as before. Rotated JPEGs stay on the host because decoders disagree on whether they
apply EXIF orientation (TorchCodec's CPU decoder does, undocumented); most are phone photos,
over the device size cap anyway. On the model side `DeviceJpegDecoder` decodes a batch at
once and applies the model's own resize and crop (the same torchvision transforms the Pillow
path uses, on tensors), so the model input matches the host path within resampling noise.
Decoding is TorchCodec's (torchvision's decoders are deprecated since 0.29). On a CPU the
same code runs through libjpeg-turbo, which is how it is tested without a GPU.
"""

import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import CenterCrop, Resize

from service.errors import InvalidInput, PayloadTooLarge
from service.images import Preprocessor, draft_factor

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


class DeviceJpegDecoder:
    """Batches of JpegUploads -> (H, W, 3) uint8 pixels on the device, the model's input."""

    def __init__(self, preprocessor: Preprocessor, device: torch.device) -> None:
        steps = preprocessor.resize_and_crop
        if not all(isinstance(step, Resize | CenterCrop) for step in steps):
            raise ValueError(f"no tensor version of {steps}")
        self._steps = list(steps)
        self._min_side = preprocessor.min_side
        self.device = device

    def decode(self, uploads: Sequence[JpegUpload]) -> list[torch.Tensor | InvalidInput]:
        """Pixels for each upload, or the InvalidInput for one that does not decode."""
        from torchcodec.decoders import decode_jpeg  # type: ignore[attr-defined]  # only here

        encoded = [torch.frombuffer(bytearray(u.data), dtype=torch.uint8) for u in uploads]
        try:
            decoded: list[torch.Tensor | InvalidInput] = list(
                decode_jpeg(encoded, mode="RGB", device=self.device)
            )
        except RuntimeError:
            decoded = [self._decode_one(data) for data in encoded]  # find the bad ones
        return [
            image if isinstance(image, InvalidInput) else self._finish(image) for image in decoded
        ]

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | InvalidInput:
        from torchcodec.decoders import decode_jpeg  # type: ignore[attr-defined]

        try:
            image: torch.Tensor = decode_jpeg([data], mode="RGB", device=self.device)[0]
            return image
        except RuntimeError as exc:
            return InvalidInput(f"image is corrupt or truncated: {exc}")

    def _finish(self, image: torch.Tensor) -> torch.Tensor:
        # Pillow decodes large JPEGs at 1/2, 1/4 or 1/8 scale (draft mode); a box average by
        # the same factor gives the model the same input (embedding cosine 0.989 -> 0.999 on
        # 512-px photos).
        height, width = image.shape[-2:]
        factor = draft_factor(width, height, self._min_side)
        if factor > 1:
            shrunk = F.avg_pool2d(image[None].float(), factor, ceil_mode=True)[0]
            image = shrunk.round_().clamp_(0, 255).to(torch.uint8)
        for step in self._steps:
            image = step(image)
        return image.permute(1, 2, 0)  # (H, W, 3), like the host path's pixels

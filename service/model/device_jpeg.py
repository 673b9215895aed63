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
from importlib import resources

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import CenterCrop, Resize

from service.errors import InvalidInput, PayloadTooLarge, ServiceError
from service.images import Preprocessor, draft_factor
from service.model.fallbacks import Fallbacks

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


# After this many batches in a row in which the device refused images that the host then
# decoded, the device decoder is taken to be broken (a driver or library fault, not the
# images) and every JPEG is decoded on the host until the process restarts.
BROKEN_AFTER_BATCHES = 3
# Mean absolute pixel difference (0..255) between device and host decode of the self-test
# photo above which the device decoder is not trusted; resampling noise is about 1.
SELF_TEST_TOLERANCE = 4.0


class DeviceJpegDecoder:
    """Batches of JpegUploads -> (H, W, 3) uint8 pixels on the device, the model's input.

    Fails safe: an image the device does not decode is decoded on the host (Pillow, the
    same path HTTP workers use) and counted in `fallbacks`; only an image the host refuses
    too is the image's fault (InvalidInput, a 422). After BROKEN_AFTER_BATCHES batches in a
    row with such rescues the device decoder is switched off and said so in /readyz.
    """

    def __init__(
        self, preprocessor: Preprocessor, device: torch.device, fallbacks: Fallbacks
    ) -> None:
        steps = preprocessor.resize_and_crop.torchvision_steps()
        if not all(isinstance(step, Resize | CenterCrop) for step in steps):
            raise ValueError(f"no tensor version of {steps}")
        self._steps = steps
        self._preprocessor = preprocessor
        self._min_side = preprocessor.min_side
        self._fallbacks = fallbacks
        self._rescued_batches = 0  # consecutive batches in which the host had to step in
        self.device = device
        self.working = True

    def self_test(self) -> None:
        """Decode a known photo on the device and compare it with the host's decode; raises
        (anything: a missing library, a driver fault, wrong pixels) if they disagree."""
        data = (resources.files("service.model") / "calibration" / "coffee.jpg").read_bytes()
        upload = inspect_jpeg(data, max_pixels=self._preprocessor.max_pixels)
        if upload is None:
            raise RuntimeError("the self-test photo is not a baseline JPEG")
        on_device = self._finish(self._decode_batch([_encoded(upload)])[0])
        on_host = torch.from_numpy(self._preprocessor(data))
        difference = (on_device.cpu().float() - on_host.float()).abs().mean().item()
        if not difference <= SELF_TEST_TOLERANCE:  # also catches NaN
            raise RuntimeError(
                f"device decode differs from the host's by {difference:.1f} per pixel "
                f"(tolerance {SELF_TEST_TOLERANCE})"
            )

    def decode(self, uploads: Sequence[JpegUpload]) -> list[torch.Tensor | InvalidInput]:
        """Pixels for each upload, or the InvalidInput for one that no decoder takes."""
        if not self.working:
            return [self._on_host(upload) for upload in uploads]
        encoded = [_encoded(upload) for upload in uploads]
        decoded: list[torch.Tensor | None]
        try:
            decoded = list(self._decode_batch(encoded))
        except Exception:  # any library or driver fault: find who it was below
            decoded = [self._decode_one(data) for data in encoded]
        results = [
            self._finish(image) if image is not None else self._on_host(upload)
            for upload, image in zip(uploads, decoded, strict=True)
        ]
        rescued = sum(
            image is None and isinstance(result, torch.Tensor)
            for image, result in zip(decoded, results, strict=True)
        )
        self._note_batch(rescued, all(image is not None for image in decoded))
        return results

    def _decode_batch(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        from torchcodec.decoders import decode_jpeg  # type: ignore[attr-defined]  # only here

        return list(decode_jpeg(encoded, mode="RGB", device=self.device))

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decode_batch([data])[0]
        except Exception:  # the host decides whether the image is at fault
            return None

    def _on_host(self, upload: JpegUpload) -> torch.Tensor | InvalidInput:
        """The host's decode, as HTTP workers do it; its refusal is the image's fault."""
        try:
            pixels = self._preprocessor(upload.data)
        except ServiceError as exc:
            return exc if isinstance(exc, InvalidInput) else InvalidInput(str(exc))
        return torch.from_numpy(pixels).to(self.device)

    def _note_batch(self, rescued: int, all_decoded: bool) -> None:
        """A batch the device decoded whole clears the record; one whose failures were all
        images the host refused too (corrupt) is no evidence either way."""
        if all_decoded:
            self._rescued_batches = 0
        if not rescued:
            return
        self._fallbacks.count("jpeg_host_decode", rescued)
        self._rescued_batches += 1
        if self._rescued_batches >= BROKEN_AFTER_BATCHES:
            self.working = False
            self._fallbacks.warn(
                "jpeg_decode",
                f"JPEG decode moved to the host: the device refused good JPEGs in "
                f"{BROKEN_AFTER_BATCHES} batches in a row (the host decoded them)",
            )

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


def _encoded(upload: JpegUpload) -> torch.Tensor:
    return torch.frombuffer(bytearray(upload.data), dtype=torch.uint8)

"""JPEG decode on the model's device (nvJPEG on CUDA), for when the host cannot keep up.

The HTTP side only reads the header (service.model.jpeg_upload). `DeviceJpegDecoder` decodes
a batch at once and applies the model's own resize and crop (torchvision's transforms on
tensors, with the geometry of the Pillow path), so the model input matches the host path
within resampling noise.
Decoding is TorchCodec's (torchvision's decoders are deprecated since 0.29). On a CPU the
same code runs through libjpeg-turbo, which is how it is tested without a GPU.
"""

from collections.abc import Sequence
from importlib import resources

import torch
import torch.nn.functional as F
from torchvision.transforms import CenterCrop, Resize

from service.errors import InvalidInput, ServiceError
from service.images import Preprocessor, draft_factor
from service.model.fallbacks import Fallbacks
from service.model.jpeg_upload import JpegUpload, inspect_jpeg

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

"""One call's images for a model host (`HopBatch`): what a caller gathers (service.transport.
hop_gather) and a host answers image by image (HostedModel.infer_many).

What is copied where: the pixel images of a call are stacked into one contiguous uint8 array
by the caller (one copy). A large call goes by reference (service.transport.ray_link): Ray
carries that array as one out-of-band buffer (pickle protocol 5: no per-image pickling),
inside the call or through its object store, and the replica reads it in place, each image a
view of its row, until the model's batch copies it into its input tensor. A small call (one
client's image or two) goes by value: the array is pickled into one gRPC message (one copy
in) and read out of it at the replica (one copy out). JPEGs for a device decoder travel as
they are (bytes, pickled in the call).
"""

from dataclasses import dataclass

import numpy as np

from batching import BatchOutcome, Priority
from service import tracing
from service.model.jpeg_upload import JpegUpload
from service.model.model_io import ModelInput, ModelOutputs

Answer = tuple[BatchOutcome[ModelOutputs], bool]
Outcome = Answer | BaseException  # per image: its answer, or what it raised there


@dataclass(frozen=True)
class HopItem:
    """One image's request, as the host needs it besides the image."""

    timeout_s: float
    key: str
    priority: Priority
    request_id: str
    carrier: tracing.Carrier | None


@dataclass(frozen=True)
class HopBatch:
    """The images of one call, in order: pixel images as one contiguous array, JPEGs apart."""

    items: tuple[HopItem, ...]
    pixels: np.ndarray | None  # (pixel images, H, W, 3) uint8
    jpegs: tuple[JpegUpload, ...]
    is_jpeg: tuple[bool, ...]  # per item: the next of `jpegs`, or the next row of `pixels`

    @classmethod
    def of(cls, images: list[tuple[ModelInput, HopItem]]) -> "HopBatch":
        rows = [image for image, _ in images if not isinstance(image, JpegUpload)]
        return cls(
            items=tuple(item for _, item in images),
            pixels=np.stack(rows) if rows else None,
            jpegs=tuple(image for image, _ in images if isinstance(image, JpegUpload)),
            is_jpeg=tuple(isinstance(image, JpegUpload) for image, _ in images),
        )

    def inputs(self) -> list[ModelInput]:
        """Each item's image: a JPEG, or a view of its row of the pixels."""
        jpegs, row = iter(self.jpegs), 0
        out: list[ModelInput] = []
        for is_jpeg in self.is_jpeg:
            if is_jpeg:
                out.append(next(jpegs))
            else:
                assert self.pixels is not None
                out.append(self.pixels[row])
                row += 1
        return out

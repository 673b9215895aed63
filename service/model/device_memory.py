"""Batches that fit in the device's memory.

A batch size measured on an idle device can stop fitting later (another process on the GPU,
fragmentation, a larger compiled graph). A forward that runs out of memory is not a reason
to fail the images in it: the batch is run again in halves, and the largest batch the
device has shown room for becomes the ceiling for every later batch (said once in the log
and in /readyz).
"""

from collections.abc import Callable

import torch

from service.model.backend import Pixels
from service.model.fallbacks import Fallbacks
from service.model.model_io import ModelOutputs

# Allocation failures that are not torch's own OutOfMemoryError (cuDNN, cuBLAS workspaces).
_OOM_MESSAGES = ("out of memory", "ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)
    )


def release_cached_memory() -> None:
    """Hand what the caching allocator holds back, so the next try starts clean."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()


class BatchCeiling:
    """The most images one forward gets: the configured batch size, lowered on OOM."""

    def __init__(self, largest: int, fallbacks: Fallbacks) -> None:
        self.largest = largest
        self._fallbacks = fallbacks

    def run(self, forward: Callable[[Pixels], ModelOutputs], pixels: Pixels) -> list[ModelOutputs]:
        """One row of outputs per image, in order, through forwards of at most `largest`.

        Raises what the forward raises, out-of-memory at a single image included."""
        rows: list[ModelOutputs] = []
        start = 0
        while start < len(pixels):
            chunk = pixels[start : start + self.largest]
            try:
                outputs = forward(chunk)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error) or len(chunk) == 1:
                    raise
                release_cached_memory()
                self._lower(len(chunk))
                continue
            rows.extend(outputs.rows())
            start += len(chunk)
        return rows

    def _lower(self, failed_at: int) -> None:
        self.largest = max(1, failed_at // 2)
        self._fallbacks.count("oom_split")
        self._fallbacks.warn(
            "batch_ceiling",
            f"the device ran out of memory at a batch of {failed_at}; batches now run "
            f"{self.largest} images at a time",
        )

"""Shared-memory pixel slots: how an image crosses from an HTTP worker to the model worker.

Each HTTP worker owns one file in shared memory (/dev/shm) cut into fixed-size uint8 slots
of the model's input shape. It writes an image's pixels into a free slot and sends only the
slot number; the model worker reads the slot. A slot is released when the model worker's
reply for it arrives (result, error or cancellation) or when the connection drops, never
earlier, so a slot is never rewritten while the model worker may still read it.
"""

import mmap
import os
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

from batching import QueueFull


def shared_memory_dir() -> Path:
    """RAM-backed on Linux; elsewhere the temp directory (same semantics, slower)."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


class PixelSlots:
    """The owner's side: allocate, write, release. Single-threaded (the event loop)."""

    def __init__(self, path: Path, count: int, shape: tuple[int, int, int]) -> None:
        self.path = path
        self.count = count
        self.shape = shape
        size = count * int(np.prod(shape))
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(descriptor, size)
            self._map = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._pixels = np.ndarray((count, *shape), np.uint8, buffer=self._map)
        self._free = deque(range(count))

    @property
    def in_use(self) -> int:
        return self.count - len(self._free)

    def put(self, pixels: np.ndarray) -> int:
        """Copy pixels into a free slot and return its number; QueueFull when none is free."""
        if pixels.shape != self.shape:
            raise ValueError(f"pixels of shape {pixels.shape}, slots of {self.shape}")
        if not self._free:
            raise QueueFull(self.count, 1.0)
        slot = self._free.popleft()
        self._pixels[slot] = pixels
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        del self._pixels
        self._map.close()
        self.path.unlink(missing_ok=True)


class SlotReader:
    """The model worker's side: a read view of one HTTP worker's slots."""

    def __init__(self, path: Path, count: int, shape: tuple[int, int, int]) -> None:
        size = count * int(np.prod(shape))
        with path.open("rb") as handle:
            self._map = mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ)
        self._pixels = np.ndarray((count, *shape), np.uint8, buffer=self._map)

    def copy(self, slot: int) -> np.ndarray:
        """The slot's pixels, copied out so the slot can be reused once the reply is sent."""
        pixels: np.ndarray = self._pixels[slot].copy()
        return pixels

    def close(self) -> None:
        del self._pixels
        self._map.close()

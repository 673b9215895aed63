"""Which labels are live: a bitmap FAISS reads directly as a search filter.

Deletes clear a bit instead of removing the vector from the index (which compacts the whole
array), so a delete costs O(1) at any size; the dead vectors are dropped by the next
background build. Searches pass the bitmap (or a filter's bitmap AND it) to FAISS as an
IDSelectorBitmap, so a dead label is never a candidate.
"""

import threading

import faiss
import numpy as np


class LiveLabels:
    """A growable bit per label. One writer (set, clear); any number of readers."""

    def __init__(self) -> None:
        self._bits = np.zeros(1024, np.uint8)
        self._count = 0
        self._lock = threading.Lock()  # growth replaces the array; readers take a reference

    @property
    def count(self) -> int:
        return self._count

    def set_many(self, labels: np.ndarray) -> None:
        if not len(labels):
            return
        with self._lock:
            self._grow(int(labels.max()))
            mask = self.as_bool(len(self._bits) * 8)
            mask[labels] = True
            self._bits = np.packbits(mask, bitorder="little")
            self._count = int(mask.sum())

    def set(self, label: int) -> None:
        with self._lock:
            self._grow(label)
            byte, bit = divmod(label, 8)
            if not self._bits[byte] >> bit & 1:
                self._bits[byte] |= np.uint8(1 << bit)
                self._count += 1

    def clear(self, label: int) -> None:
        with self._lock:
            byte, bit = divmod(label, 8)
            if byte < len(self._bits) and self._bits[byte] >> bit & 1:
                self._bits[byte] &= np.uint8(~(1 << bit) & 0xFF)
                self._count -= 1

    def bits(self) -> np.ndarray:
        """The packed bits now (a reference: keep it alive while FAISS reads it)."""
        return self._bits

    def as_bool(self, size: int | None = None) -> np.ndarray:
        """One bool per label, for combining with a filter's mask."""
        bits = self._bits
        mask = np.unpackbits(bits, bitorder="little").astype(bool)
        if size is not None and size > len(mask):
            mask = np.concatenate([mask, np.zeros(size - len(mask), bool)])
        return mask

    def _grow(self, label: int) -> None:
        needed = label // 8 + 1
        if needed > len(self._bits):
            # Doubling: readers holding the old array keep a valid (slightly stale) copy.
            grown = np.zeros(max(needed, 2 * len(self._bits)), np.uint8)
            grown[: len(self._bits)] = self._bits
            self._bits = grown


def selector(bits: np.ndarray) -> faiss.IDSelector:
    """A FAISS selector over packed little-endian bits (the caller keeps `bits` alive)."""
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))


def pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, bitorder="little")

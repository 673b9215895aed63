"""A dense copy of the stored vectors, one float16 row a label, read through a memory map.

The exact plans (a filter's matching items scanned, candidates re-ranked) read thousands of
scattered vectors a query. From SQLite each costs about 11 us on the 2-core machine (a
B-tree walk, an overflow page, a bytes object, a join); a row of this file costs about 1 us,
since label L sits at offset L * row_bytes and numpy copies the rows out of the map in one
call. The SQLite store stays the source of truth: this file is derived, written after each
commit (not synced), and trusted at start-up only when the store recorded a clean close
after it; otherwise it is rebuilt from the store in the background, reads falling back to
SQLite meanwhile.
"""

import mmap
import os
import threading
from pathlib import Path

import numpy as np

_GROWTH_ROWS = 1 << 16  # the file grows this many rows at a time (sparse: holes cost no disk)


class VectorRows:
    """Rows of `row_bytes` (a float16 vector) at offset label * row_bytes of one file."""

    def __init__(self, path: Path, row_bytes: int, *, fresh: bool) -> None:
        """`fresh`: start from an empty file (the old one cannot be trusted)."""
        self.path = path
        self.row_bytes = row_bytes
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        self._fd = os.open(path, flags, 0o644)
        self._map_lock = threading.Lock()
        self._rows = np.zeros((0, row_bytes), np.uint8)
        self._remap()

    @property
    def capacity(self) -> int:
        """How many labels (0 up to capacity - 1) the file has room for."""
        return os.fstat(self._fd).st_size // self.row_bytes

    def write(self, labels: np.ndarray, codes: np.ndarray) -> None:
        """Put each label's row (uint8, row_bytes wide). Runs of consecutive labels, as an
        import writes them, go in one write each."""
        if len(labels) == 0:
            return
        self.reserve(int(labels.max()) + 1)
        breaks = np.flatnonzero(np.diff(labels) != 1) + 1
        for run in np.split(np.arange(len(labels)), breaks):
            first = int(labels[run[0]])
            os.pwrite(self._fd, np.ascontiguousarray(codes[run]).tobytes(), first * self.row_bytes)

    def reserve(self, labels: int) -> None:
        """Room for labels 0 up to `labels` - 1."""
        if labels > self.capacity:
            rows = -(-labels // _GROWTH_ROWS) * _GROWTH_ROWS
            os.ftruncate(self._fd, rows * self.row_bytes)

    def read(self, labels: np.ndarray) -> np.ndarray:
        """The rows of these labels (uint8, row_bytes wide), copied out of the map."""
        rows = self._rows
        if len(labels) and int(labels.max()) >= len(rows):
            rows = self._remap()
        picked: np.ndarray = rows[labels]
        return picked

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        self._rows = np.zeros((0, self.row_bytes), np.uint8)  # the map closes with its last view
        os.close(self._fd)

    def _remap(self) -> np.ndarray:
        """Map the file as it is now. A reader holding the old map keeps a valid view: the
        file only grows."""
        with self._map_lock:
            size = self.capacity * self.row_bytes
            if size == 0:
                return self._rows
            mapped = mmap.mmap(self._fd, size, prot=mmap.PROT_READ)
            self._rows = np.frombuffer(mapped, np.uint8).reshape(-1, self.row_bytes)
            return self._rows

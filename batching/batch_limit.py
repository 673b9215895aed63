"""The largest batch that lets an accepted item meet the latency target.

An accepted item can wait for the batch running when it arrives and then run in its own: two
batch times. When the target is below that at the configured batch size (a slow device, a
big model, a tight target), no admission rule can meet it; only smaller batches can. So the
limit follows measured batch times, and only what batches actually took (a small batch's
time is not scaled up: its fixed costs would make a large one look slower than it is): when
a batch takes more than half the target, the limit shrinks in proportion to its size, at
most by half at a time (one stalled batch does not collapse it); it grows back one at a time
while a full batch one larger would still take under 80% of that half (the margin keeps it
from flapping). It never goes below 1 or above the configured maximum, and with no target it
is the maximum.
"""

import math

_GROW_MARGIN = 0.8


class BatchLimit:
    def __init__(self, max_batch_size: int, target_s: float | None) -> None:
        self.maximum = max_batch_size
        self.size = max_batch_size
        self.target_s = target_s

    @property
    def limited(self) -> bool:
        """True while batches are kept below the maximum to meet the target."""
        return self.size < self.maximum

    def retarget(self, maximum: int, target_s: float | None) -> None:
        """A new maximum or target: the limit starts from the maximum and adapts again."""
        self.maximum, self.target_s = maximum, target_s
        self.size = maximum

    def ran(self, size: int, run_s: float) -> None:
        """A batch of `size` items took `run_s`: adapt the limit."""
        if self.target_s is None or size < 1:
            return
        budget = self.target_s / 2  # the running batch, then the item's own
        if run_s > budget and min(size, self.size) > 1:
            fits = math.floor(size * budget / run_s)
            self.size = max(1, self.size // 2, min(size - 1, self.size - 1, fits))
        elif (
            size == self.size
            and self.size < self.maximum
            and run_s * (self.size + 1) / size < _GROW_MARGIN * budget
        ):
            self.size += 1

"""Embedding a version's index again from another version's items: the writes after a
store label, the deletions by id, a batch of the new version's model at a time, taking at
most a quarter of the time while the live model has work (so live traffic keeps its
latency) and all of it while the live model is idle."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batching import Priority
from service.admission import current_priority
from service.settings import Settings
from service.versions.records import version_settings, write_watermark
from service.versions.registry import VersionRecord
from service.versions.serving import Serving

_CHUNK = 32  # items read from the live store at a time
_GROUP = 8  # images re-embedded at once (one batch of the new version's batcher)
_SHARE = 0.25  # of the time re-embedding may take while the live model is busy


@dataclass
class Progress:
    done: int = 0
    skipped: int = 0  # items stored without an image cannot be embedded again
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    def describe(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total - self.done - self.skipped)
        return {
            "done": self.done,
            "skipped": self.skipped,
            "total": self.total,
            "items_per_s": round(rate, 2),
            "seconds_left": round(left / rate, 1) if rate > 0 else None,
        }


class Reembedding:
    """Catches a target version up with a source version's items."""

    def __init__(self, settings: Settings, live: Callable[[], Serving]) -> None:
        self._settings = settings
        self._live = live  # the live version now (it changes at a switch)

    async def catch_up_from(
        self,
        record: VersionRecord,
        target: Serving,
        progress: Progress,
        source: Serving,
        after: int,
        *,
        deletions: bool = True,
    ) -> int:
        """Embed into `target` every item written to `source` after label `after`, drop the
        ones deleted there (with `deletions`); returns the label caught up to."""
        settings = version_settings(self._settings, record)
        wrote = False
        while True:
            chunk = await source.index.written_after(after, _CHUNK)
            if not chunk:
                break
            wrote = True
            for start in range(0, len(chunk), _GROUP):
                began = time.monotonic()
                group = [item_id for _, item_id in chunk[start : start + _GROUP]]
                await asyncio.gather(*(_embed(target, progress, source, i) for i in group))
                await self._leave_room_for_live(time.monotonic() - began)
            after = chunk[-1][0]
            write_watermark(settings, source.name, after)
        # Deletions leave no label: compare the ids, but only when something may differ
        # (this runs every second for each ready version; at a million items a diff is not
        # free): with no write caught up, equal counts mean the same items.
        if not deletions or (
            not wrote and await target.index.count() == await source.index.count()
        ):
            return after
        gone = await target.index.ids() - await source.index.ids()
        for item_id in gone:
            await target.index.delete(item_id)
        return after

    async def _leave_room_for_live(self, worked_s: float) -> None:
        if not self._live().pipeline.model.idle:
            await asyncio.sleep(worked_s * (1 / _SHARE - 1))


async def _embed(target: Serving, progress: Progress, source: Serving, item_id: str) -> None:
    item = await source.index.get(item_id)
    image = await source.index.image(item_id)
    if item is None or image is None:  # deleted meanwhile, or stored without its image
        progress.skipped += 1
        return
    # Bulk work: the live model's interactive images go first, and this sheds first.
    token = current_priority.set(Priority.BULK)
    try:
        inference = await target.pipeline.run(image)
    finally:
        current_priority.reset(token)
    await target.index.put(item_id, inference.outputs.embedding, item.metadata, image)
    progress.done += 1

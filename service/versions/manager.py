"""The model versions of a running service: each a model host with its own index, one live.

A new version loads beside the live one (its own ModelHost: load, accuracy gate, warm-up),
then every stored item's image is embedded again by it into its own index, a batch at a
time: at full speed while the live model is idle, and in at most a quarter of the time while
it is busy, so live traffic keeps its latency. Items
written meanwhile are caught up by their store labels (every write takes a new label), items
deleted meanwhile by their ids. A ready version keeps following the live one, so making it
live, and going back, is a pointer swap. Requests resolve their version once, at the start,
so no response mixes two models.
"""

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.milvus_collection import MilvusUnavailable
from service.errors import Conflict, InvalidInput, NotFound, NotReady
from service.settings import Settings
from service.versions.memory import check_memory, parameter_bytes
from service.versions.milvus_aliases import drop_version_collections, publish_live
from service.versions.records import (
    default_record,
    read_watermark,
    version_dir,
    version_settings,
    write_watermark,
)
from service.versions.reembedding import Progress, Reembedding
from service.versions.registry import (
    DEFAULT,
    InvalidVersion,
    Registry,
    RegistryFile,
    VersionRecord,
    check_name,
)
from service.versions.serving import Parts, Serving, open_serving

log = logging.getLogger(__name__)

_FOLLOW_EVERY_S = 1.0  # how often a ready version catches up with the live one


@dataclass
class Version:
    record: VersionRecord
    state: str = "loading"  # loading, re-embedding, ready, live, failed
    reason: str | None = None
    serving: Serving | None = None
    progress: Progress = field(default_factory=Progress)
    synced_to: int = 0  # the live store's label this version's index has caught up to
    task: "asyncio.Task[None] | None" = None
    # After it stops being live: until when writes of requests that resolved it as live may
    # still reach it, and the label of its own store they are forwarded from.
    forward_until: float = 0.0
    forwarded_to: int = 0
    switched_at: int = 0  # the new live version's store label at the switch


class ModelVersions:
    def __init__(
        self,
        settings: Settings,
        first: Serving,
        parts: Parts,
        on_switch: Callable[[Serving], None],
    ) -> None:
        self._settings = settings
        self._parts = parts
        self._metrics = first.metrics  # every version's model metrics beside the first's
        self._on_switch = on_switch
        self._file = RegistryFile(settings.data_dir, default_record(settings))
        registry = self._file.load()
        self._versions = {r.name: Version(r) for r in registry.versions}
        self.live = first.name
        live = self._versions[self.live]
        live.state, live.serving = "live", first
        self._switching = asyncio.Lock()
        self._publishing: asyncio.Task[None] | None = None
        self._reembedding = Reembedding(settings, self._live_serving)

    @staticmethod
    def live_settings(settings: Settings) -> tuple[str, Settings]:
        """The version to start with (the live one recorded), and its settings."""
        registry = RegistryFile(settings.data_dir, default_record(settings)).load()
        record = registry.record(registry.live)
        assert record is not None
        return record.name, version_settings(settings, record)

    def start(self) -> None:
        """Load every other recorded version in the background (resuming re-embeddings), and
        on Milvus make the live aliases name the live version's collections."""
        for version in self._versions.values():
            if version.serving is None:
                version.task = asyncio.create_task(self._prepare(version))
        self._publishing = asyncio.create_task(self._publish_at_start())

    async def _publish_at_start(self) -> None:
        async with self._switching:
            try:
                await asyncio.to_thread(
                    publish_live, self._settings, self._versions[self.live].record
                )
            except MilvusUnavailable as exc:  # serving goes on; the next activation retries
                log.warning("the live Milvus aliases are not updated: %s", exc)

    # -- requests -------------------------------------------------------------------------

    def serving(self, name: str | None) -> Serving:
        version = self._versions.get(self.live if name is None else name)
        if version is None:  # a bad parameter of the request
            raise InvalidInput(f"no model version {name!r}; GET /v1/models lists them")
        if version.state not in ("ready", "live") or version.serving is None:
            raise NotReady(f"model version {version.record.name!r} is {version.state}")
        return version.serving

    async def describe(self) -> dict[str, Any]:
        return {"live": self.live, "versions": [self._describe(v) for v in self._versions.values()]}

    def _describe(self, version: Version) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": version.record.name,
            "state": version.state,
            "weights": version.record.weights,
            "model": version.record.model,
            "reason": version.reason,
            # the re-embedding under way, or the last one's figures
            "progress": version.progress.describe() if version.progress.total else None,
        }
        if version.serving is not None and version.serving.pipeline.ready:
            status = version.serving.pipeline.status()
            described |= {
                "fingerprint": status.spec.fingerprint,
                "labels_source": status.spec.labels_source,
                "backend": status.backend,
                "memory_bytes": parameter_bytes(version.serving),
            }
        return described

    # -- management -----------------------------------------------------------------------

    async def add(self, name: str, weights: str, model: str | None) -> dict[str, Any]:
        try:
            check_name(name)
        except InvalidVersion as exc:
            raise InvalidInput(str(exc)) from None
        if name in self._versions:
            raise Conflict(f"model version {name!r} exists; DELETE it first")
        if _looks_like_path(weights) and not await asyncio.to_thread(Path(weights).exists):
            raise InvalidInput(f"weights {weights!r}: no such file or model directory")
        live = self._versions[self.live]
        record = VersionRecord(name, weights, model or live.record.model)
        check_memory(live.serving)
        version = Version(record)
        self._versions[name] = version
        self._save()
        version.task = asyncio.create_task(self._prepare(version))
        return self._describe(version)

    async def activate(self, name: str) -> dict[str, Any]:
        version = self._versions.get(name)
        if version is None:
            raise NotFound(f"no model version {name!r}")
        async with self._switching:
            if name == self.live:
                return await self.describe()
            if version.state != "ready" or version.serving is None:
                raise Conflict(f"model version {name!r} is {version.state}, not ready")
            old = self._versions[self.live]
            assert old.serving is not None
            await self._catch_up(version, old.serving)
            # Everything the new version's store holds up to here is what the old one held.
            boundary = await version.serving.index.max_label()
            # Milvus's live aliases first: if Milvus refuses, nothing has switched.
            await asyncio.to_thread(publish_live, self._settings, version.record)
            # The switch: one assignment each, no await in between.
            self.live, version.state, old.state = name, "live", "ready"
            self._on_switch(version.serving)
            self._save()
            version.forward_until = 0.0
            # Writes that reached the old version since the last catch-up.
            old.forwarded_to = await self._catch_up_from(version, old.serving, version.synced_to)
            # It follows the new live version from the boundary on (what the catch-up just
            # brought over is embedded again, harmlessly), after its grace (see _follow).
            old.synced_to = old.switched_at = boundary
            old.forward_until = time.monotonic() + self._settings.request_timeout_s + 1
            if old.task is None:  # the version the service started with: follow from now on
                old.task = asyncio.create_task(self._keep_following(old))
            # So that a restart resumes the old version from here, not from the start.
            old_settings = version_settings(self._settings, old.record)
            write_watermark(old_settings, name, old.synced_to)
            log.info("model version %s is live (was %s)", name, old.record.name)
        return await self.describe()

    async def remove(self, name: str) -> None:
        version = self._versions.get(name)
        if version is None:
            raise NotFound(f"no model version {name!r}")
        if name == self.live:
            raise Conflict(f"model version {name!r} is live; activate another one first")
        if name == DEFAULT:
            raise Conflict("the default version is the service's own configuration")
        del self._versions[name]
        self._save()
        await self._close(version)
        shutil.rmtree(version_dir(self._settings, name), ignore_errors=True)
        await asyncio.to_thread(drop_version_collections, self._settings, version.record)

    async def close(self) -> None:
        """Stop the background work and close every version this opened (the first one's
        parts belong to the app's lifespan)."""
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
        for version in list(self._versions.values()):
            await self._close(version)

    # -- background -----------------------------------------------------------------------

    async def _prepare(self, version: Version) -> None:
        name = version.record.name
        try:
            settings = version_settings(self._settings, version.record)
            version.serving = await open_serving(name, settings, self._parts, self._metrics)
            version.state = "re-embedding"
            live = self._live_serving()
            version.synced_to = read_watermark(settings, live.name)
            version.progress = Progress(total=await live.index.count())
            await self._catch_up(version, live)
            version.state = "ready"
            log.info("model version %s is ready", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _fail(version, exc)
            return
        await self._keep_following(version)

    async def _keep_following(self, version: Version) -> None:
        """Until removed, whenever not live: follow the live version."""
        while True:
            await asyncio.sleep(_FOLLOW_EVERY_S)
            async with self._switching:
                if version.state != "ready":
                    continue
                try:
                    await self._follow(version)
                except NotReady as exc:  # a worker process restarting: next time
                    log.warning("model version %s cannot follow now: %s", version.record.name, exc)
                except Exception as exc:
                    _fail(version, exc)
                    return

    async def _follow(self, version: Version) -> None:
        live = self._versions[self.live]
        assert live.serving is not None
        if not version.forward_until:
            await self._catch_up(version, live.serving)
            return
        # It was live a moment ago: a request that resolved it then (here, or in an HTTP
        # worker that had not yet seen the switch) may still write to it. Those writes go on
        # to the live version until no such request can be left; only then does it follow.
        assert version.serving is not None
        version.forwarded_to = await self._catch_up_from(
            live, version.serving, version.forwarded_to, deletions=False
        )
        if time.monotonic() < version.forward_until:
            return
        version.forward_until = 0.0
        # Deletions leave no label. What the live version held at the switch was exactly what
        # this one held: those of its items this one no longer has were deleted here since.
        held = await live.serving.index.ids(version.switched_at)
        for item_id in held - await version.serving.index.ids():
            await live.serving.index.delete(item_id)

    def _live_serving(self) -> Serving:
        serving = self._versions[self.live].serving
        assert serving is not None
        return serving

    async def _catch_up(self, version: Version, source: Serving) -> None:
        version.synced_to = await self._catch_up_from(version, source, version.synced_to)

    async def _catch_up_from(
        self, version: Version, source: Serving, after: int, *, deletions: bool = True
    ) -> int:
        assert version.serving is not None
        return await self._reembedding.catch_up_from(
            version.record, version.serving, version.progress, source, after, deletions=deletions
        )

    async def _close(self, version: Version) -> None:
        if version.task is not None:
            version.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await version.task
        if version.serving is not None:
            await version.serving.stack.aclose()
            version.serving = None

    def _save(self) -> None:
        records = tuple(v.record for v in self._versions.values())
        self._file.save(Registry(self.live, records))


def _fail(version: Version, exc: Exception) -> None:
    version.state, version.reason = "failed", f"{type(exc).__name__}: {exc}"
    log.exception("model version %s failed", version.record.name)


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pth", ".pt", ".safetensors"))

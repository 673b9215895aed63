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
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from service.errors import Conflict, InsufficientMemory, InvalidInput, NotFound, NotReady
from service.explain.inspection import ModelInspector
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.settings import Settings
from service.versions.registry import (
    DEFAULT,
    InvalidVersion,
    Registry,
    RegistryFile,
    VersionRecord,
    check_name,
)

log = logging.getLogger(__name__)

_CHUNK = 32  # items read from the live store at a time
_FOLLOW_EVERY_S = 1.0  # how often a ready version catches up with the live one
_GROUP = 8  # images re-embedded at once (one batch of the new version's batcher)
_SHARE = 0.25  # of the time re-embedding may take while the live model is busy


@dataclass
class Serving:
    """One version's model pipeline, index and inspector, and how to close them."""

    name: str
    pipeline: Pipeline
    index: ItemIndex
    inspector: ModelInspector
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)


# A version's parts (service.app.ServiceParts), by its name and settings: where they live.
Parts = Callable[[str, Settings, CollectorRegistry], AbstractAsyncContextManager[Any]]


async def open_serving(
    name: str, settings: Settings, parts: Parts, exported: CollectorRegistry | None = None
) -> Serving:
    """Load a version: its model host (raises ModelLoadError) and its index. Its parts'
    metrics go to `exported` (a worker's first version) or, like its pipeline's, to a
    registry of its own: a second host's metrics would collide with the first one's."""
    stack = AsyncExitStack()
    try:
        registry = CollectorRegistry()
        loaded = await stack.enter_async_context(parts(name, settings, exported or registry))
        pipeline = Pipeline(loaded.model, settings, registry)
        await pipeline.start()
        stack.push_async_callback(pipeline.stop)
    except BaseException:
        await stack.aclose()
        raise
    return Serving(name, pipeline, loaded.index, loaded.inspector, stack)


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


class Versions(Protocol):
    """The model versions as the routes see them: managed in this process (ModelVersions),
    or by the first model worker (service.transport.remote_versions.RemoteVersions)."""

    def start(self) -> None: ...

    def serving(self, name: str | None) -> Serving:
        """The version `name` (None: the live one), if it can answer (ready or live)."""
        ...

    async def describe(self) -> dict[str, Any]:
        """The live version's name and every version with its state."""
        ...

    async def add(self, name: str, weights: str, model: str | None) -> dict[str, Any]:
        """Load a version beside the live one and re-embed the index for it, in the
        background; answers at once with its description."""
        ...

    async def activate(self, name: str) -> dict[str, Any]: ...

    async def remove(self, name: str) -> None: ...

    async def close(self) -> None: ...


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
        self._on_switch = on_switch
        self._file = RegistryFile(settings.data_dir, default_record(settings))
        registry = self._file.load()
        self._versions = {r.name: Version(r) for r in registry.versions}
        self.live = first.name
        live = self._versions[self.live]
        live.state, live.serving = "live", first
        self._switching = asyncio.Lock()

    @staticmethod
    def live_settings(settings: Settings) -> tuple[str, Settings]:
        """The version to start with (the live one recorded), and its settings."""
        registry = RegistryFile(settings.data_dir, default_record(settings)).load()
        record = registry.record(registry.live)
        assert record is not None
        return record.name, version_settings(settings, record)

    def start(self) -> None:
        """Load every other recorded version in the background (resuming re-embeddings)."""
        for version in self._versions.values():
            if version.serving is None:
                version.task = asyncio.create_task(self._prepare(version))

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
        _check_memory(live)
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
            _write_watermark(old_settings, name, old.synced_to)
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

    async def close(self) -> None:
        """Stop the background work and close every version this opened (the first one's
        parts belong to the app's lifespan)."""
        for version in list(self._versions.values()):
            await self._close(version)

    # -- background -----------------------------------------------------------------------

    async def _prepare(self, version: Version) -> None:
        name = version.record.name
        try:
            settings = version_settings(self._settings, version.record)
            version.serving = await open_serving(name, settings, self._parts)
            version.state = "re-embedding"
            live = self._live_serving()
            version.synced_to = _read_watermark(settings, live.name)
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
        """Embed into `version` every item written to `source` after label `after`, drop the
        ones deleted there (with `deletions`); returns the label caught up to."""
        target = version.serving
        assert target is not None
        settings = version_settings(self._settings, version.record)
        wrote = False
        while True:
            chunk = await source.index.written_after(after, _CHUNK)
            if not chunk:
                break
            wrote = True
            for start in range(0, len(chunk), _GROUP):
                began = time.monotonic()
                group = [item_id for _, item_id in chunk[start : start + _GROUP]]
                await asyncio.gather(*(self._embed_into(version, source, i) for i in group))
                await self._leave_room_for_live(time.monotonic() - began)
            after = chunk[-1][0]
            _write_watermark(settings, source.name, after)
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

    async def _embed_into(self, version: Version, source: Serving, item_id: str) -> None:
        target = version.serving
        assert target is not None
        item = await source.index.get(item_id)
        image = await source.index.image(item_id)
        if item is None or image is None:  # deleted meanwhile, or stored without its image
            version.progress.skipped += 1
            return
        inference = await target.pipeline.run(image)
        await target.index.put(item_id, inference.outputs.embedding, item.metadata, image)
        version.progress.done += 1

    async def _leave_room_for_live(self, worked_s: float) -> None:
        """While the live model has work, re-embedding takes at most _SHARE of the time, so
        live requests keep their latency; an idle service re-embeds at full speed."""
        if not self._live_serving().pipeline.model.idle:
            await asyncio.sleep(worked_s * (1 / _SHARE - 1))

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


def default_record(settings: Settings) -> VersionRecord:
    return VersionRecord(
        DEFAULT, settings.weights or "pretrained, else lite0-package", settings.model
    )


def version_dir(settings: Settings, name: str) -> Path:
    return settings.data_dir if name == DEFAULT else settings.data_dir / "versions" / name


def version_settings(settings: Settings, record: VersionRecord) -> Settings:
    """A version's settings: the service's, with its weights, model and own data directory
    (its index, its converted backends)."""
    if record.name == DEFAULT:
        return settings
    return settings.model_copy(
        update={
            "weights": record.weights,
            "model": record.model,
            "data_dir": version_dir(settings, record.name),
        }
    )


def _watermark_path(settings: Settings) -> Path:
    return settings.data_dir / "reembedded.json"


def _read_watermark(settings: Settings, source: str) -> int:
    """How far a re-embedding from `source` got before a restart (0: from the start)."""
    path = _watermark_path(settings)
    if not path.exists():
        return 0
    recorded = json.loads(path.read_text())
    return int(recorded["label"]) if recorded.get("source") == source else 0


def _write_watermark(settings: Settings, source: str, label: int) -> None:
    path = _watermark_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"source": source, "label": label}))
    temporary.replace(path)  # the items it counts are durable already (index writes)


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or weights.endswith((".pth", ".pt", ".safetensors"))


def parameter_bytes(serving: Serving) -> int:
    """The serving model's weights in memory, as its host reports them (0: not loaded)."""
    model = serving.pipeline.model
    return model.status().parameter_bytes if model.ready else 0


def available_memory_bytes() -> int:
    """Memory the kernel says new allocations can have (MemAvailable), without psutil (an
    optional package)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _check_memory(live: Version) -> None:
    """Refuse a version that would not fit: it needs about what the live one takes (its
    weights several times over: backend, explainer replicas, activations)."""
    need = 4 * parameter_bytes(live.serving) if live.serving is not None else 0
    available = available_memory_bytes()
    if need > available:
        raise InsufficientMemory(
            f"a new version needs about {need / 2**20:.0f} MiB; "
            f"{available / 2**20:.0f} MiB are available"
        )

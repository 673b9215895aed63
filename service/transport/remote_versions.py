"""An HTTP worker's view of the model versions the first model worker hosts.

Which version is live is read from the registry file at each request: the model worker
replaces that file at the switch, so every HTTP worker switches with it, and a request
resolves its version once (a stat; the file is read again only when it changed). Each
version is reached over its own sockets with the same clients as the first one, opened as
soon as the version appears in the registry, so a version made live is already connected.
Whether a version can answer a pinned request (ready or live, not still re-embedding) comes
from the model worker, asked every half second while a version is on its way. Management
calls go to the model worker.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from service.errors import InvalidInput, NotReady
from service.settings import Settings
from service.transport.operations import VersionOperations as VERSIONS
from service.transport.rpc import RpcClient
from service.versions.records import default_record, version_settings
from service.versions.registry import Registry, RegistryFile
from service.versions.serving import Parts, Serving, open_serving

log = logging.getLogger(__name__)

_ASK_EVERY_S = 0.5  # how often the model worker is asked the states of versions on their way
_SETTLED = ("ready", "live", "failed")


class RemoteVersions:
    def __init__(
        self,
        settings: Settings,
        first: Serving,
        parts: Parts,
        on_switch: Callable[[Serving], None],
        manager: RpcClient,
    ) -> None:
        self._settings = settings
        self._parts = parts
        self._on_switch = on_switch
        self._manager = manager
        self._file = RegistryFile(settings.data_dir, default_record(settings))
        self._seen: tuple[int, int] | None = None
        self._registry = Registry(first.name, ())
        self._servings: dict[str, Serving] = {first.name: first}
        self._first = first.name
        self._opening: dict[str, asyncio.Task[None]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._states: dict[str, str] = {first.name: "live"}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._read_registry()
        self._task = asyncio.create_task(self._keep_up(), name="model-versions")

    # -- requests -------------------------------------------------------------------------

    def serving(self, name: str | None) -> Serving:
        self._read_registry()
        target = self._registry.live if name is None else name
        if self._registry.record(target) is None:
            raise InvalidInput(f"no model version {name!r}; GET /v1/models lists them")
        if name is not None and name != self._registry.live:
            state = self._states.get(name, "loading")
            if state not in ("ready", "live"):
                raise NotReady(f"model version {name!r} is {state}")
        serving = self._servings.get(target)
        if serving is None:
            raise NotReady(f"model version {target!r} is not reachable yet")
        return serving

    # -- management, in the model worker --------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        return await VERSIONS.describe.call(await self._reached())

    async def add(self, name: str, weights: str, model: str | None) -> dict[str, Any]:
        return await VERSIONS.add.call(await self._reached(), name, weights, model)

    async def activate(self, name: str) -> dict[str, Any]:
        return await VERSIONS.activate.call(await self._reached(), name)

    async def remove(self, name: str) -> None:
        await VERSIONS.remove.call(await self._reached(), name)

    async def _reached(self) -> RpcClient:
        """The model worker's connection, made now if it listens (it may have restarted)."""
        await self._manager.connected_if_listening()
        return self._manager

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._opening.values(), *self._closing) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in list(self._servings):
            await self._close(name)
        await self._manager.stop()

    # -- background -----------------------------------------------------------------------

    def _read_registry(self) -> None:
        try:
            stat = os.stat(self._file.path)
            seen = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            seen = (0, 0)
        if seen == self._seen:
            return
        self._seen = seen
        before = self._registry.live
        self._registry = self._file.load()
        names = {record.name for record in self._registry.versions}
        for name in names - self._servings.keys() - self._opening.keys():
            self._states.pop(name, None)  # a new version, or one removed and added again
            self._opening[name] = asyncio.create_task(self._open(name))
        for name in self._servings.keys() - names:
            closing = asyncio.create_task(self._close(name))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        live = self._servings.get(self._registry.live)
        if self._registry.live != before and live is not None:
            self._on_switch(live)

    async def _open(self, name: str) -> None:
        record = self._registry.record(name)
        assert record is not None
        try:
            settings = version_settings(self._settings, record)
            self._servings[name] = await open_serving(name, settings, self._parts)
        except Exception:
            log.exception("model version %s: cannot reach it", name)
        finally:
            del self._opening[name]

    async def _close(self, name: str) -> None:
        serving = self._servings.pop(name, None)
        if serving is not None and name != self._first:  # the first is the app's to close
            await serving.stack.aclose()

    async def _keep_up(self) -> None:
        while True:
            await asyncio.sleep(_ASK_EVERY_S)
            self._read_registry()
            if all(self._states.get(r.name) in _SETTLED for r in self._registry.versions):
                continue
            try:
                described = await VERSIONS.describe.call(self._manager)
            except NotReady:
                continue  # the model worker is restarting
            self._states = {v["name"]: v["state"] for v in described["versions"]}

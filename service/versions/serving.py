"""A model version as requests see it: its pipeline, index and inspector (`Serving`), how
one is opened from its parts, and what the routes ask of the versions (`Versions`)."""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from service.explain.inspection import ModelInspector
from service.items.search_index import ItemIndex
from service.pipeline import Pipeline
from service.settings import Settings


@dataclass
class Serving:
    """One version's model pipeline, index and inspector, and how to close them."""

    name: str
    pipeline: Pipeline
    index: ItemIndex
    inspector: ModelInspector
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    # Where its parts' metrics are exported, labelled with its name; a manager opens every
    # other version's parts on the same registry (None: a registry of its own).
    metrics: CollectorRegistry | None = None


# A version's parts (service.app.ServiceParts), by its name and settings: where they live.
Parts = Callable[[str, Settings, CollectorRegistry], AbstractAsyncContextManager[Any]]


async def open_serving(
    name: str, settings: Settings, parts: Parts, exported: CollectorRegistry | None = None
) -> Serving:
    """Load a version: its model host (raises ModelLoadError) and its index. Its parts'
    metrics go to `exported`, where every version's model host reports on the same metrics
    told apart by a `version` label (None: a registry of its own, as its pipeline's)."""
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
    return Serving(name, pipeline, loaded.index, loaded.inspector, stack, exported)


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

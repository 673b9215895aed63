"""What the worker processes offer each other, declared once.

An Operation is made from the method of the typed interface it stands for (`ItemIndex.put`,
`ModelInspector.cam`, `ModelWorkerCalls.infer`): its name, arguments and result come from
that signature, so a client's call is type-checked against the interface, and a worker's
handler table is built from the same declarations (and refused if it misses one). Adding an
index operation is then: the interface, its implementation, its declaration here; the
client and the worker follow.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from batching import BatchOutcome, Priority
from service.explain.inspection import ModelInspector
from service.hosting.client import ModelStatus
from service.hosting.hop_batch import HopBatch, Outcome
from service.items.search_index import ItemIndex
from service.model.model_io import ModelInput, ModelOutputs
from service.model.spec import ModelSpec
from service.transport.rpc import Handler, Peer, RpcClient
from service.versions.serving import Versions

P = ParamSpec("P")
R = TypeVar("R")


class Link(Protocol):
    """A connection to where an interface is implemented: a worker process over its Unix
    socket (service.transport.rpc.RpcClient), or a Ray Serve deployment
    (service.transport.ray_link.RayLink). The clients (RemoteModel, RemoteIndex,
    RemoteInspector) take either."""

    name: str  # what it reaches, for logs and errors

    @property
    def connected(self) -> bool: ...

    async def call(self, method: str, *args: Any, cancellable: bool = True) -> Any: ...

    async def open(self) -> None:
        """Connect (in the background), waiting briefly for a peer that already listens."""
        ...

    async def connected_if_listening(self) -> None:
        """Wait briefly for a peer that listens but is not connected yet."""
        ...

    async def stop(self) -> None: ...


class Operation(Generic[P, R]):
    """One call a worker answers. `cancellable=False`: once sent it finishes (a write), so a
    caller that goes away never hides its outcome."""

    def __init__(
        self, method: Callable[Concatenate[Any, P], Awaitable[R]], *, cancellable: bool = True
    ) -> None:
        self.name = method.__name__
        self.cancellable = cancellable

    async def call(self, link: Link, *args: P.args, **kwargs: P.kwargs) -> R:
        _positional_only(self, kwargs)
        reply: R = await link.call(self.name, *args, cancellable=self.cancellable)
        return reply

    def send(
        self, client: RpcClient, *args: P.args, **kwargs: P.kwargs
    ) -> tuple[int, "asyncio.Future[R]"]:
        """Sent without waiting: the call id (to cancel it) and the reply's future."""
        _positional_only(self, kwargs)
        return client.send(self.name, *args)

    def __repr__(self) -> str:
        return f"Operation({self.name})"


def _positional_only(operation: Operation[Any, Any], kwargs: Mapping[str, object]) -> None:
    if kwargs:  # the wire carries positions only
        raise TypeError(f"{operation.name}: pass arguments by position, not {sorted(kwargs)}")


class HostedModelCalls(Protocol):
    """What every host of the model answers besides explanations (a model worker, a Ray
    replica): service.hosting.hosted.HostedModel implements it."""

    async def describe(self) -> ModelStatus: ...

    async def infer(
        self, item: ModelInput, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        """One image's outputs (uint8 pixels, or a JPEG for the device to decode), and
        whether another caller's identical image in flight was run for it."""
        ...

    async def infer_many(self, batch: HopBatch) -> list[Outcome]:
        """`infer` for each image of one call (service.transport.hop_gather): per image its
        answer, or the error it raised, which fails that image alone."""
        ...


class ModelWorkerCalls(HostedModelCalls, Protocol):
    """A model worker adds shared-memory pixel slots, for HTTP workers on its machine."""

    async def attach(self, path: str, count: int, shape: tuple[int, int, int]) -> None:
        """Read this connection's pixel slots from the shared-memory file at `path`."""
        ...

    async def infer_slot(
        self, slot: int, timeout_s: float, key: str, priority: Priority
    ) -> tuple[BatchOutcome[ModelOutputs], bool]:
        """As `infer`, for the pixels in `slot`."""
        ...


class IndexHostCalls(Protocol):
    """The index worker's own calls: it opens each model version's index when the first model
    worker asks, and serves it on that version's socket (service.transport.sockets)."""

    async def open_index(self, version: str, data_dir: str, spec: ModelSpec) -> None:
        """Open (once) the index under `data_dir` for vectors of `spec`: raises ModelMismatch
        for an index of another model."""
        ...

    async def close_index(self, version: str) -> None: ...


class IndexHostOperations:
    open_index = Operation(IndexHostCalls.open_index, cancellable=False)
    close_index = Operation(IndexHostCalls.close_index, cancellable=False)
    ALL: tuple[Operation[Any, Any], ...] = (open_index, close_index)


class VersionOperations:
    """Model version management, answered by the first model worker for the HTTP workers."""

    describe = Operation(Versions.describe)
    add = Operation(Versions.add, cancellable=False)
    activate = Operation(Versions.activate, cancellable=False)
    remove = Operation(Versions.remove, cancellable=False)
    ALL: tuple[Operation[Any, Any], ...] = (describe, add, activate, remove)


class IndexOperations:
    put = Operation(ItemIndex.put, cancellable=False)
    delete = Operation(ItemIndex.delete, cancellable=False)
    get = Operation(ItemIndex.get)
    image = Operation(ItemIndex.image)
    search = Operation(ItemIndex.search)
    similar = Operation(ItemIndex.similar)
    stats = Operation(ItemIndex.stats)
    written_after = Operation(ItemIndex.written_after)
    max_label = Operation(ItemIndex.max_label)
    count = Operation(ItemIndex.count)
    ids = Operation(ItemIndex.ids)
    ALL: tuple[Operation[Any, Any], ...] = (
        *(put, delete, get, image, search, similar, stats),
        *(written_after, max_label, count, ids),
    )


class InspectorOperations:
    cam = Operation(ModelInspector.cam)
    features = Operation(ModelInspector.features)
    kernels = Operation(ModelInspector.kernels)
    card = Operation(ModelInspector.card)
    ALL: tuple[Operation[Any, Any], ...] = (cam, features, kernels, card)


class HostedModelOperations:
    describe = Operation(HostedModelCalls.describe)
    infer = Operation(HostedModelCalls.infer)
    infer_many = Operation(HostedModelCalls.infer_many)
    ALL: tuple[Operation[Any, Any], ...] = (describe, infer, infer_many)


class ModelOperations(HostedModelOperations):
    """A model worker's: the hosted model's operations and its slots."""

    attach = Operation(ModelWorkerCalls.attach)
    infer_slot = Operation(ModelWorkerCalls.infer_slot)
    ALL: tuple[Operation[Any, Any], ...] = (*HostedModelOperations.ALL, attach, infer_slot)


def handler_table(
    declared: Sequence[Operation[Any, Any]], handlers: Mapping[Operation[Any, Any], Handler]
) -> dict[str, Handler]:
    """The worker side: a handler for every declared operation, and for nothing else."""
    missing = [op.name for op in declared if op not in handlers]
    extra = [op.name for op in handlers if op not in declared]
    if missing or extra:
        raise ValueError(f"handlers do not match the declaration: missing {missing}, extra {extra}")
    return {op.name: handler for op, handler in handlers.items()}


Method = Callable[..., Awaitable[Any]]


def implemented(
    declared: Sequence[Operation[Any, Any]], implementation: object
) -> dict[str, Method]:
    """Every declared operation's method on `implementation`, by name (refused if one is
    missing): what a host that takes calls by name dispatches to."""
    missing = [op.name for op in declared if not callable(getattr(implementation, op.name, None))]
    if missing:
        raise ValueError(f"{type(implementation).__name__} does not implement {missing}")
    return {op.name: getattr(implementation, op.name) for op in declared}


def forwarded(
    declared: Sequence[Operation[Any, Any]], implementation: object
) -> dict[str, Handler]:
    """The worker side for an interface implemented in the worker's process: every declared
    operation calls the implementation's method of that name (the connection not needed)."""

    def forward(method: Method) -> Handler:
        async def handler(_: Peer, *args: Any) -> Any:
            return await method(*args)

        return handler

    methods = implemented(declared, implementation)
    return {name: forward(method) for name, method in methods.items()}

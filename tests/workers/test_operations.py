"""The worker operations are declared once: names from the interfaces, tables checked."""

import asyncio
from typing import Any

import pytest

from service.hosting.hosted import HostedModel
from service.items.search_index import ItemIndex
from service.transport.operations import (
    HostedModelOperations,
    IndexOperations,
    InspectorOperations,
    ModelOperations,
    forwarded,
    handler_table,
    implemented,
)
from service.transport.rpc import Peer


def test_every_index_method_is_declared_with_its_name() -> None:
    declared = {op.name for op in IndexOperations.ALL}
    interface = {
        name
        for name, member in vars(ItemIndex).items()
        # close and connected_if_listening: the client's own
        if asyncio.iscoroutinefunction(member) and name not in ("close", "connected_if_listening")
    }
    assert declared == interface
    assert not IndexOperations.put.cancellable and not IndexOperations.delete.cancellable
    assert IndexOperations.search.cancellable  # a search nobody waits for is dropped


def test_a_worker_table_must_answer_every_declared_operation() -> None:
    async def describe(_: Peer) -> None: ...

    with pytest.raises(
        ValueError, match="missing \\['infer', 'infer_many', 'attach', 'infer_slot'\\]"
    ):
        handler_table(ModelOperations.ALL, {ModelOperations.describe: describe})
    with pytest.raises(ValueError, match="extra \\['cam'\\]"):
        handler_table(
            ModelOperations.ALL[:1],
            {ModelOperations.describe: describe, InspectorOperations.cam: describe},
        )


def test_forwarded_calls_the_implementations_method_of_that_name() -> None:
    class Kernels:
        async def cam(self, *args: Any) -> str:
            return f"cam{args}"

        async def features(self, *args: Any) -> str:
            return "features"

        async def kernels(self) -> str:
            return "kernels"

        async def card(self) -> str:
            return "card"

    table = forwarded(InspectorOperations.ALL, Kernels())
    assert asyncio.run(table["cam"](Peer(), 1, 2)) == "cam(1, 2)"
    assert asyncio.run(table["kernels"](Peer())) == "kernels"


def test_an_implementation_missing_a_declared_method_is_refused() -> None:
    class NoCard:
        async def cam(self) -> None: ...

    with pytest.raises(ValueError, match="does not implement \\['features', 'kernels', 'card'\\]"):
        forwarded(InspectorOperations.ALL, NoCard())


def test_every_host_of_the_model_answers_the_hosted_model_operations() -> None:
    # The model worker and the Ray Model replica both serve HostedModel.
    hosted = {"describe", "infer", "infer_many"}
    assert set(implemented(HostedModelOperations.ALL, HostedModel)) == hosted
    assert {op.name for op in ModelOperations.ALL} == hosted | {"attach", "infer_slot"}


def test_operations_take_arguments_by_position_only() -> None:
    with pytest.raises(TypeError, match="by position"):
        IndexOperations.get.send(None, item_id="a")  # type: ignore[arg-type]

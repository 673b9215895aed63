"""The service's parts for an Ingress replica: the model, the index and the inspector are
Ray Serve deployments, reached through the same clients as worker processes."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from ray.serve.handle import DeploymentHandle

from service.app import Components, ServiceParts
from service.settings import Settings
from service.transport.ray_link import RayLink
from service.transport.remote_index import RemoteIndex
from service.transport.remote_inspector import RemoteInspector
from service.transport.remote_model import RemoteModel


def on_ray(model: DeploymentHandle[Any], index: DeploymentHandle[Any]) -> Components:
    @asynccontextmanager
    async def components(
        name: str, settings: Settings, registry: CollectorRegistry
    ) -> AsyncIterator[ServiceParts]:
        by_value = settings.ray_by_value_bytes
        yield ServiceParts(
            RemoteModel.over_ray(
                RayLink(model, "Model", by_value),
                settings.ray_hop_window_ms / 1000,
                settings.ray_hop_calls,
                registry,
            ),
            RemoteIndex(RayLink(index, "Index", by_value)),
            RemoteInspector(RayLink(model, "Model", by_value)),
        )

    return components

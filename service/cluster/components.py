"""The service's parts for an Ingress replica: the model, the index and the inspector are
Ray Serve deployments, reached through the same clients as worker processes."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from ray.serve.handle import DeploymentHandle

from service.app import Components, ServiceParts
from service.cluster.link import RayLink
from service.cluster.ray_model import RayModel
from service.settings import Settings
from service.workers.remote_index import RemoteIndex
from service.workers.remote_inspector import RemoteInspector


def on_ray(model: DeploymentHandle[Any], index: DeploymentHandle[Any]) -> Components:
    @asynccontextmanager
    async def components(
        name: str, settings: Settings, registry: CollectorRegistry
    ) -> AsyncIterator[ServiceParts]:
        ray_model = RayModel(model)
        yield ServiceParts(
            ray_model, RemoteIndex(RayLink(index, "Index")), RemoteInspector(ray_model.link)
        )

    return components

"""The Ray Serve application: Ingress (the FastAPI app), Model (the model host) and Index
(the one owner of the index files), named so that `serve status` shows what each is.

- Ingress replicas run the same app as `resnet-serve serve` (every route, the web page,
  /metrics of the ingress): parsing, decoding, cache look-ups and admission at the door.
- Model replicas each host the model as a model worker does (service.hosting.hosted), with the
  service's own batcher: its adaptive batch, latency-target admission and watchdog come along,
  where Ray Serve's @serve.batch has a fixed size and wait and refuses nothing. Images arrive
  as uint8 pixels (or a JPEG for a GPU to decode), never as float tensors.
- On FAISS (the default), one Index replica owns the index directory (RESNET_SERVE_DATA_DIR)
  on a persistent volume; pin it to the node that has the volume with a custom resource
  (deploy/kuberay/rayservice.yaml). On Milvus (INDEX_ENGINE=milvus) the replicas keep no
  files: run several, anywhere (deploy/kuberay/rayservice-milvus.yaml).

Settings come from each replica's environment (the application's runtime_env env_vars), as
from the process environment for `resnet-serve serve`. The replicas' health checks are the
service's own readiness: a Model replica whose batch runs past the watchdog bound fails its
check, and Serve replaces it.
"""

import asyncio
import os
from typing import Any, cast

import ray
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from service import tracing
from service.app import create_app
from service.cluster.components import on_ray
from service.cluster.grpc_ingress import InferenceProtocolMethods
from service.cluster.replica_metrics import ReplicaMetrics, publish_forever
from service.hosting.client import HUNG_MESSAGE
from service.hosting.host import ModelHost
from service.hosting.hosted import HostedModel
from service.items.search_index import SearchIndex, open_collection_for
from service.logs import current_request_id
from service.settings import Settings
from service.transport.operations import (
    HostedModelOperations,
    IndexOperations,
    InspectorOperations,
    Method,
    implemented,
)
from service.transport.ray_link import RayLink
from service.versions.registry import DEFAULT

# Defaults that fit one 2-core machine (Model 1 CPU, Ingress and Index half each); the
# deployment config (deploy/ray/serve.yaml, deploy/kuberay) sizes them for a cluster.
# Calls a replica takes at once before Serve queues them at the caller: well above the
# batcher's queue, so the service's admission (not Serve's) decides what is refused.
_MODEL_ONGOING = 256
_INDEX_ONGOING = 512
_INGRESS_ONGOING = 256
# Ray settings the replicas' processes need, given to them by the application's runtime_env
# (deploy/ray/serve.yaml and the KubeRay manifests spell them out; a test holds them equal).
# A call's arguments up to 1 MiB go inside the call, not through the object store (a put, a
# round trip to the raylet, a get): a call with one image's pixels (147 kB, over Ray's 100 kB
# default) took 5.1-5.5 ms on the 2-core machine, 2.9-3.3 ms inline, what 1 kB takes. Up to
# six images a call go inline; a larger batch still crosses as one shared-memory buffer.
RAY_PROCESS_ENV = {"RAY_max_direct_call_object_size": str(1 << 20)}


def replica_settings() -> Settings:
    """This replica's settings: its environment, with the model's and the decoders' threads
    defaulting to the CPUs Ray gave the replica rather than to the whole machine's."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    # No gRPC port of the service's own in a replica: Ray Serve's proxies own the ports.
    defaults: dict[str, Any] = {"grpc_port": 0}
    for name in ("threads", "decode_threads"):
        if f"RESNET_SERVE_{name.upper()}" not in os.environ and cpus >= 1:
            defaults[name] = int(cpus)
    return Settings(**defaults)


class _Dispatch:
    """One `call(name, context, *args)` method for every operation a deployment implements;
    `context`: the caller's request id and trace context (service.transport.ray_link)."""

    _methods: dict[str, Method]

    async def call(self, name: str, context: tuple[str, tracing.Carrier | None], *args: Any) -> Any:
        request_id, carrier = context
        current_request_id.set(request_id)  # this call's own task: its log lines
        with tracing.continued(f"ray {name}", carrier, request_id=request_id):
            return await self._methods[name](*args)


@serve.deployment(
    name="Model",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=_MODEL_ONGOING,
    health_check_period_s=5,
    health_check_timeout_s=10,
)
class Model(_Dispatch):
    async def __init__(self) -> None:  # type: ignore[misc]  # Ray actors may construct async
        tracing.configure("ray-model")
        settings = replica_settings()
        self._drain_s = settings.request_timeout_s
        registry = CollectorRegistry()
        self._host = ModelHost(settings, registry, DEFAULT)
        await self._host.load()
        await self._host.start()
        replica = serve.get_replica_context().replica_id.unique_id
        self._publishing = asyncio.create_task(
            publish_forever(registry, replica, settings.ray_metrics_every_s)
        )
        self._methods = implemented(HostedModelOperations.ALL, HostedModel(self._host)) | (
            implemented(InspectorOperations.ALL, self._host.inspector)
        )

    async def check_health(self) -> None:
        if self._host.batcher.hung:
            raise RuntimeError(HUNG_MESSAGE)

    async def __del__(self) -> None:
        self._publishing.cancel()
        await self._host.stop(drain_timeout_s=self._drain_s)


@serve.deployment(
    name="Index",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0.5},  # FAISS: the one owner of the files, never more
    max_ongoing_requests=_INDEX_ONGOING,
    health_check_period_s=5,
)
class Index(_Dispatch):
    async def __init__(self, model: DeploymentHandle[Any]) -> None:  # type: ignore[misc]
        tracing.configure("ray-index")
        settings = replica_settings()
        # The index opens only for the vectors the model produces (ModelMismatch otherwise).
        status = await HostedModelOperations.describe.call(RayLink(model, "Model"))
        collection = await asyncio.to_thread(open_collection_for, settings, status.spec)
        self._index = SearchIndex(collection, search_threads=settings.decode_threads)
        self._methods = implemented(IndexOperations.ALL, self._index)

    async def check_health(self) -> None:
        if not self._index.ready:
            raise RuntimeError("the index is closed")

    async def __del__(self) -> None:
        await self._index.close()  # stops a background build; the store is the index


@serve.deployment(
    name="Ingress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=_INGRESS_ONGOING
)
@serve.ingress()
class Ingress(InferenceProtocolMethods):
    """HTTP (the FastAPI app) and the inference protocol over gRPC, through Ray's proxies."""

    def __init__(self, model: DeploymentHandle[Any], index: DeploymentHandle[Any]) -> None:
        self._parts = on_ray(model, index)
        self._settings = replica_settings()
        self._app: FastAPI | None = None
        self._servicer: Any = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # /metrics serves the Model replicas' own metrics too (one scrape sees them all).
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(ReplicaMetrics(self._settings.ray_metrics_every_s))
        self._app = create_app(self._settings, self._parts, registry, versions=None)
        return self._app

    def inference_servicer(self) -> Any:
        if self._servicer is None:
            from service.oip.grpc_face import InferenceServicer  # grpcio: only when called

            assert self._app is not None, "Serve builds the app before any call"
            self._servicer = InferenceServicer(self._app.state.oip, self._settings)
        return self._servicer


# @serve.deployment made the classes Deployments; mypy still sees the classes.
MODEL, INDEX, INGRESS = (cast(Deployment, each) for each in (Model, Index, Ingress))


def application(
    model: Deployment = MODEL, index: Deployment = INDEX, ingress: Deployment = INGRESS
) -> Application:
    """The three deployments bound together (each may come with `.options(...)`)."""
    bound_model = model.bind()
    return ingress.bind(bound_model, index.bind(bound_model))


# What `serve run service.cluster.deployments:app` and deploy/ray/serve.yaml run.
app = application()

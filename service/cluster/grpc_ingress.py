"""The inference protocol's gRPC face on Ray. Ray Serve's gRPC proxy (`grpc_options` in
deploy/ray/serve.yaml, given Triton's `add_GRPCInferenceServiceServicer_to_server`) calls
the Ingress deployment's method named as the RPC; each method here hands the call to the one
InferenceServicer (service.oip.grpc_face), through an adapter of Ray's call context.

What differs from the service's own gRPC server: Ray's proxy applies its own
`request_timeout_s` (the client's `grpc-timeout` does not reach the replica), and a status
is returned by setting it on Ray's context and raising, which Ray passes on as that status.
"""

import sys
from typing import Any, NoReturn

from service import extras

# What deploy/ray/serve.yaml gives Ray's gRPC proxy (add_to_server below).
SERVICER_FUNCTION = "service.cluster.grpc_ingress.add_to_server"
# The RPCs the servicer implements (the others of Triton's service answer UNIMPLEMENTED).
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "ModelInfer",
)


class CallEnded(Exception):
    """The call ended with the status set on Ray's context (Ray answers with it)."""


class RayCallContext:
    """Ray Serve's gRPC context as the servicer's CallContext."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def time_remaining(self) -> float | None:
        return None  # Ray's proxy enforces its request_timeout_s itself

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._context.set_trailing_metadata(metadata)

    async def abort(self, code: Any, details: str) -> NoReturn:
        self._context.set_code(code)
        self._context.set_details(details)
        raise CallEnded(details)


class InferenceProtocolMethods:
    """Mixed into the Ingress deployment: one method per RPC, named as Ray's proxy calls it."""

    def inference_servicer(self) -> Any:
        """The InferenceServicer over this replica's app."""
        raise NotImplementedError


def _forwarding(method: str) -> Any:
    async def forward(self: InferenceProtocolMethods, request: Any, grpc_context: Any) -> Any:
        servicer = self.inference_servicer()
        return await getattr(servicer, method)(request, RayCallContext(grpc_context))

    forward.__name__ = forward.__qualname__ = method
    return forward


for _method in METHODS:
    setattr(InferenceProtocolMethods, _method, _forwarding(_method))


def add_to_server(servicer: Any, server: Any) -> None:
    """Triton's add_GRPCInferenceServiceServicer_to_server, in Ray's proxy, once the
    protocol's messages can travel between the proxy and the replicas."""
    name_protocol_modules()
    from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

    add_GRPCInferenceServiceServicer_to_server(servicer, server)


def name_protocol_modules() -> None:
    """Triton's generated messages say they live in modules named after their .proto files
    (grpc_service_pb2, model_config_pb2); Ray pickles requests and responses between its
    proxy and the replica, so those names must import in both."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    sys.modules.setdefault("grpc_service_pb2", service_pb2)
    sys.modules.setdefault("model_config_pb2", model_config_pb2)


if extras.installed("grpc"):  # the replica unpickles requests as soon as it takes calls
    name_protocol_modules()

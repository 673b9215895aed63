"""deploy/kserve/inferenceservice.yaml, checked without a cluster: each InferenceService
against deploy/kserve/inferenceservice.schema.json (KServe's CRD, the fields used), its
container against the Kubernetes API schema, and its wiring against the service itself."""

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.app import api_routes
from service.settings import Settings

KSERVE = Path(__file__).parents[1] / "deploy" / "kserve"
SCHEMA = json.loads((KSERVE / "inferenceservice.schema.json").read_text())
K8S_VERSION = kubernetes_validate.latest_version()


def services() -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((KSERVE / "inferenceservice.yaml").read_text())
    return {doc["metadata"]["name"]: doc for doc in documents}


@pytest.mark.parametrize("name", ["resnet-serve", "resnet-serve-grpc"])
def test_each_inference_service_matches_kserve_and_kubernetes(name: str) -> None:
    service = services()[name]
    jsonschema.validate(service, SCHEMA)
    (container,) = service["spec"]["predictor"]["containers"]
    template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": {"spec": {"containers": [container]}},
    }
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("name", "port_name"), [("resnet-serve", "http1"), ("resnet-serve-grpc", "h2c")]
)
def test_the_exposed_port_is_the_one_the_service_listens_on(name: str, port_name: str) -> None:
    (container,) = services()[name]["spec"]["predictor"]["containers"]
    env = {
        item["name"].removeprefix("RESNET_SERVE_").lower(): item["value"]
        for item in container["env"]
    }
    settings = Settings(**env)
    (port,) = container["ports"]
    assert port["name"] == port_name  # what KServe reads: http1 is REST, h2c is gRPC
    listening = settings.port if port_name == "http1" else settings.grpc_port
    assert port["containerPort"] == listening
    paths = {getattr(route, "path", "") for route in api_routes()}
    assert container["readinessProbe"]["httpGet"]["path"] in paths
    assert container["readinessProbe"]["httpGet"]["port"] == settings.port


def test_a_misspelt_field_is_caught() -> None:
    service = services()["resnet-serve"]
    service["spec"]["predictor"]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(service, SCHEMA)
    service = services()["resnet-serve"]
    service["spec"]["predictor"]["scaleMetric"] = "qps"
    with pytest.raises(jsonschema.ValidationError, match="qps"):
        jsonschema.validate(service, SCHEMA)

"""deploy/ray/serve.yaml and deploy/kuberay/rayservice.yaml, checked without a cluster:
Ray Serve's own config schema, the Kubernetes API schemas (kubernetes-validate, strict), and
the RayService schema in deploy/kuberay; and that they run this project's deployments."""

import importlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from service.cluster import deployments, grpc_ingress
from service.settings import Settings

ROOT = Path(__file__).parents[2]
SERVE_YAML = ROOT / "deploy/ray/serve.yaml"
KUBERAY = ROOT / "deploy/kuberay"
K8S_VERSION = kubernetes_validate.latest_version()


MANIFESTS = ("rayservice.yaml", "rayservice-milvus.yaml")


def manifest(name: str = "rayservice.yaml") -> dict[str, dict[str, Any]]:
    documents = yaml.safe_load_all((KUBERAY / name).read_text())
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in documents}


def ray_service(name: str = "rayservice.yaml") -> dict[str, Any]:
    (service,) = [doc for doc in manifest(name).values() if doc["kind"] == "RayService"]
    return service


def serve_config(text: str) -> ServeApplicationSchema:
    (app,) = ServeDeploySchema.model_validate(yaml.safe_load(text)).applications
    return app


def deployment_options(app: ServeApplicationSchema) -> dict[str, Any]:
    return {d.name: d for d in app.deployments}


def test_serve_yaml_runs_the_three_deployments_on_loopback_port_8000() -> None:
    config = yaml.safe_load(SERVE_YAML.read_text())
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    # Ray's gRPC proxy serves the inference protocol with the servicer the Ingress implements
    assert config["grpc_options"]["grpc_servicer_functions"] == [grpc_ingress.SERVICER_FUNCTION]
    module, _, function = grpc_ingress.SERVICER_FUNCTION.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))
    app = serve_config(SERVE_YAML.read_text())
    module, name = app.import_path.split(":")
    assert module == deployments.__name__ and name == "app"
    assert set(deployment_options(app)) == {"Ingress", "Model", "Index"}
    model = deployment_options(app)["Model"]
    assert model.autoscaling_config["min_replicas"] <= model.autoscaling_config["max_replicas"]
    assert deployment_options(app)["Index"].num_replicas == 1


@pytest.mark.parametrize(
    "name",
    [
        "PersistentVolumeClaim/resnet-serve-index",
        "Deployment/resnet-serve-redis",
        "Service/resnet-serve-redis",
    ],
)
def test_kubernetes_objects_match_the_api_schemas(name: str) -> None:
    kubernetes_validate.validate(manifest()[name], K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_rayservice_matches_its_schema_and_its_pod_templates_the_api(name: str) -> None:
    service = ray_service(name)
    serve_config(service["spec"]["serveConfigV2"])  # Ray Serve's own schema
    schema = json.loads((KUBERAY / "rayservice.schema.json").read_text())
    jsonschema.validate(service, schema)
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check"},
            "template": group["template"],
        }
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    service = ray_service()
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(service, json.loads((KUBERAY / "rayservice.schema.json").read_text()))
    redis = manifest()["Deployment/resnet-serve-redis"]
    redis["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(redis, K8S_VERSION, strict=True)


def test_the_rayservice_wires_gpus_the_index_volume_and_redis() -> None:
    service = ray_service()
    app = serve_config(service["spec"]["serveConfigV2"])
    options = deployment_options(app)
    assert set(options) == {"Ingress", "Model", "Index"}
    assert options["Model"].ray_actor_options.num_gpus == 1
    env = app.runtime_env["env_vars"]
    assert env["RESNET_SERVE_REDIS_URL"].startswith("redis://resnet-serve-redis:")
    # Index is pinned by a resource only the group that mounts the volume has.
    pin = options["Index"].ray_actor_options.resources
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    holders = [
        name
        for name, g in groups.items()
        if set(pin) <= set(json.loads(json.loads(g["rayStartParams"].get("resources", '"{}"'))))
    ]
    assert holders == ["index"] and groups["index"]["maxReplicas"] == 1
    index_pod = groups["index"]["template"]["spec"]
    (mount,) = index_pod["containers"][0]["volumeMounts"]
    (volume,) = index_pod["volumes"]
    assert mount["mountPath"] == env["RESNET_SERVE_DATA_DIR"] and volume["name"] == mount["name"]
    assert f"PersistentVolumeClaim/{volume['persistentVolumeClaim']['claimName']}" in manifest()
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == groups["gpu"]["rayStartParams"]["num-gpus"] == "1"


def test_the_milvus_variant_keeps_no_files_and_scales_the_index_out() -> None:
    objects = manifest("rayservice-milvus.yaml")
    assert not [key for key in objects if key.startswith("PersistentVolumeClaim/")]
    service = objects["RayService/resnet-serve-milvus"]
    app = serve_config(service["spec"]["serveConfigV2"])
    env = app.runtime_env["env_vars"]
    settings = Settings(
        **{
            k.removeprefix("RESNET_SERVE_").lower(): v
            for k, v in env.items()
            if k.startswith("RESNET_SERVE_")
        }
    )
    assert settings.index_engine == "milvus" and settings.milvus_uri.startswith("http://")
    index = deployment_options(app)["Index"]
    assert index.autoscaling_config["min_replicas"] >= 2  # losing one loses nothing
    assert not index.ray_actor_options.resources  # no pinning to a volume's node
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all("volumes" not in group["template"]["spec"] for group in groups)


def test_the_podmonitor_matches_its_schema_and_scrapes_ports_the_ray_pods_name() -> None:
    (monitor,) = yaml.safe_load_all((KUBERAY / "podmonitor.yaml").read_text())
    jsonschema.validate(monitor, json.loads((KUBERAY / "podmonitor.schema.json").read_text()))
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}
    for name in MANIFESTS:
        spec = ray_service(name)["spec"]["rayClusterConfig"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            (container,) = group["template"]["spec"]["containers"]
            assert scraped <= {port.get("name") for port in container["ports"]}, group
    broken = monitor | {"spec": monitor["spec"] | {"podMetricEndpoints": []}}
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: a misspelt field
        jsonschema.validate(broken, json.loads((KUBERAY / "podmonitor.schema.json").read_text()))


def test_every_way_to_run_the_application_gives_its_replicas_the_ray_settings() -> None:
    """serve.yaml and both KubeRay manifests carry RAY_PROCESS_ENV (calls inline up to 1 MiB),
    as the benchmarks run it: otherwise a deployed app is slower than the measured one."""
    apps = [serve_config(SERVE_YAML.read_text())] + [
        serve_config(ray_service(name)["spec"]["serveConfigV2"]) for name in MANIFESTS
    ]
    for app in apps:
        env_vars = (app.runtime_env or {})["env_vars"]
        assert deployments.RAY_PROCESS_ENV.items() <= env_vars.items()

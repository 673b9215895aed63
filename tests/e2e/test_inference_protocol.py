"""The Open Inference Protocol (KServe v2) through Triton's own clients, over REST and gRPC,
against one real service (Lite0, an API key for everything, a second model version)."""

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpc_client
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

from loadtest.common.processes import free_port
from loadtest.common.synthetic_head import write_head
from service.images import Preprocessor
from tests.e2e.server import Server, start_server
from tests.photos import jpeg, resized_jpeg

pytestmark = pytest.mark.e2e

KEY = "oip-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def auth() -> dict[str, str]:
    """The key's header, a new dict each call: tritonclient's HTTP client writes its
    Inference-Header-Content-Length into the headers it is given."""
    return dict(AUTH)


MODEL = "resnet-serve"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "RESNET_SERVE_GRPC_PORT": str(free_port()),
        "RESNET_SERVE_API_KEY": KEY,
        "RESNET_SERVE_API_KEY_SCOPE": "all",
    }
    started = start_server(tmp_path_factory.mktemp("oip"), env)
    started.grpc = f"127.0.0.1:{env['RESNET_SERVE_GRPC_PORT']}"  # type: ignore[attr-defined]
    yield started
    started.stop()


@pytest.fixture(scope="module")
def rest(server: Server) -> Iterator[http_client.InferenceServerClient]:
    client = http_client.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def rpc(server: Server) -> Iterator[grpc_client.InferenceServerClient]:
    client = grpc_client.InferenceServerClient(server.grpc)  # type: ignore[attr-defined]
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=auth(), timeout=60) as client:
        yield client


def images(*names: str) -> np.ndarray:
    return np.array([[jpeg(name)] for name in names], dtype=np.object_)


def rest_inputs(data: np.ndarray, binary: bool) -> list[http_client.InferInput]:
    tensor = http_client.InferInput("IMAGE", list(data.shape), "BYTES")
    if binary:
        tensor.set_data_from_numpy(data, binary_data=True)
    else:  # JSON: an encoded image travels as base64 text
        text = np.vectorize(lambda b: base64.b64encode(b).decode(), otypes=[np.object_])(data)
        tensor.set_data_from_numpy(text, binary_data=False)
    return [tensor]


def rpc_inputs(data: np.ndarray) -> list[grpc_client.InferInput]:
    tensor = grpc_client.InferInput("IMAGE", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return [tensor]


def test_health_metadata_config_and_stats(
    rest: http_client.InferenceServerClient, rpc: grpc_client.InferenceServerClient
) -> None:
    assert rest.is_server_live() and rest.is_server_ready()
    assert rpc.is_server_live() and rpc.is_server_ready()  # probes need no key
    assert rest.is_model_ready(MODEL) and rpc.is_model_ready(MODEL)
    assert not rest.is_model_ready("other") and not rpc.is_model_ready("other")
    metadata = rest.get_model_metadata(MODEL, headers=auth())
    assert metadata["platform"] == "resnet-serve:tf_efficientnet_lite0"
    assert {i["name"]: i["shape"] for i in metadata["inputs"]} == {
        "IMAGE": [-1, 1],
        "PIXELS": [-1, 3, 224, 224],
    }
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "PROBABILITIES": [-1, 1000],
        "EMBEDDING": [-1, 1280],
    }
    rpc_metadata = rpc.get_model_metadata(MODEL, headers=auth(), as_json=True)
    assert rpc_metadata["inputs"][0] == {"name": "IMAGE", "datatype": "BYTES", "shape": ["-1", "1"]}
    config = rpc.get_model_config(MODEL, headers=auth(), as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["input"][0]["data_type"] == "TYPE_STRING"
    assert rest.get_model_config(MODEL, headers=auth())["max_batch_size"] == 32
    assert rest.get_server_metadata(headers=auth())["extensions"]
    stats = rest.get_inference_statistics(MODEL, headers=auth())["model_stats"]
    assert stats[0]["name"] == MODEL and "queue" in stats[0]["inference_stats"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_jpeg_over_rest_answers_what_v1_answers(
    rest: http_client.InferenceServerClient, v1: httpx.Client, binary: bool
) -> None:
    outputs = [
        http_client.InferRequestedOutput("PROBABILITIES", binary_data=binary, class_count=5),
        http_client.InferRequestedOutput("EMBEDDING", binary_data=binary),
    ]
    result = rest.infer(
        MODEL, rest_inputs(images("coffee"), binary), outputs=outputs, headers=auth()
    )
    _same_as_v1(v1, result.as_numpy("PROBABILITIES")[0], result.as_numpy("EMBEDDING")[0])
    assert result.get_response()["model_version"] == "default"


def test_a_jpeg_over_grpc_answers_what_v1_answers(
    rpc: grpc_client.InferenceServerClient, v1: httpx.Client
) -> None:
    outputs = [
        grpc_client.InferRequestedOutput("PROBABILITIES", class_count=5),
        grpc_client.InferRequestedOutput("EMBEDDING"),
    ]
    result = rpc.infer(MODEL, rpc_inputs(images("coffee")), outputs=outputs, headers=auth())
    _same_as_v1(v1, result.as_numpy("PROBABILITIES")[0], result.as_numpy("EMBEDDING")[0])


def _same_as_v1(v1: httpx.Client, top: np.ndarray, embedding: np.ndarray) -> None:
    photo = {"file": ("cup.jpg", jpeg("coffee"))}
    predictions = v1.post("/v1/classify", files=photo).json()["predictions"]
    expected = [f"{p['class_id']}:{p['label']}" for p in predictions]
    # "score:index:label" (bytes from binary data, str from JSON)
    texts = [item.decode() if isinstance(item, bytes) else item for item in top]
    assert [":".join(text.split(":")[1:]) for text in texts] == expected
    scores = [float(text.split(":")[0]) for text in texts]
    assert scores == pytest.approx([p["score"] for p in predictions], abs=1e-5)
    reference = np.asarray(v1.post("/v1/embed", files=photo).json()["embedding"], np.float32)
    assert np.abs(embedding - reference).max() <= 1e-5


def test_preprocessed_pixels_answer_as_the_image_does(
    rpc: grpc_client.InferenceServerClient, v1: httpx.Client
) -> None:
    card = v1.get("/v1/model").json()
    data_config = card["preprocessing"] | {"input_size": card["input_size"]}
    preprocessor = Preprocessor(data_config, max_pixels=10**8)
    pixels = preprocessor(jpeg("coffee")).astype(np.float32) / 255.0
    mean = np.asarray(data_config["mean"], np.float32)
    std = np.asarray(data_config["std"], np.float32)
    normalised = ((pixels - mean) / std).transpose(2, 0, 1)[None]
    tensor = grpc_client.InferInput("PIXELS", list(normalised.shape), "FP32")
    tensor.set_data_from_numpy(normalised)
    result = rpc.infer(MODEL, [tensor], headers=auth())
    photo = {"file": ("cup.jpg", jpeg("coffee"))}
    reference = np.asarray(v1.post("/v1/embed", files=photo).json()["embedding"], np.float32)
    assert np.abs(result.as_numpy("EMBEDDING")[0] - reference).max() <= 1e-5


def test_a_batch_with_one_bad_image_fails_naming_it(
    rest: http_client.InferenceServerClient, rpc: grpc_client.InferenceServerClient
) -> None:
    good = rpc.infer(MODEL, rpc_inputs(images("coffee", "astronaut")), headers=auth())
    assert good.as_numpy("PROBABILITIES").shape == (2, 1000)
    batch = np.array([[jpeg("coffee")], [b"not an image"]], dtype=np.object_)
    with pytest.raises(InferenceServerException, match="image 1") as failed:
        rpc.infer(MODEL, rpc_inputs(batch), headers=auth())
    assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="image 1"):
        rest.infer(MODEL, rest_inputs(batch, True), headers=auth())


def test_a_pinned_version_answers_and_an_unknown_one_is_not_found(
    server: Server,
    rest: http_client.InferenceServerClient,
    rpc: grpc_client.InferenceServerClient,
    v1: httpx.Client,
) -> None:
    assert v1.post("/v1/models", json={"name": "v2", "weights": "lite0-package"}).is_success
    deadline = time.monotonic() + 120
    while v1.get("/v1/models").json()["versions"][-1]["state"] != "ready":
        assert time.monotonic() < deadline, v1.get("/v1/models").json()
        time.sleep(0.2)
    answer = rpc.infer(MODEL, rpc_inputs(images("coffee")), model_version="v2", headers=auth())
    assert answer.get_response().model_version == "v2"
    assert rest.is_model_ready(MODEL, "v2")
    with pytest.raises(InferenceServerException) as missing:
        rpc.infer(MODEL, rpc_inputs(images("coffee")), model_version="v9", headers=auth())
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    unknown = httpx.post(
        f"{server.url}/v2/models/{MODEL}/versions/v9/infer", json={"inputs": []}, headers=auth()
    )
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    assert (
        httpx.post(f"{server.url}/v2/models/other/infer", json={}, headers=auth()).status_code
        == 404
    )


def test_the_api_key_is_asked_for_on_both_protocols(
    rest: http_client.InferenceServerClient, rpc: grpc_client.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        rpc.infer(MODEL, rpc_inputs(images("coffee")))
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="API key"):
        rest.infer(MODEL, rest_inputs(images("coffee"), True))
    wrong = {"x-api-key": "guess"}
    with pytest.raises(InferenceServerException, match="wrong"):
        rpc.infer(MODEL, rpc_inputs(images("coffee")), headers=wrong)


BAD_REST_BODIES = {
    "no inputs": ({"outputs": []}, "inputs"),
    "unknown input": (
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]},
        "IMAGE",
    ),
    "wrong datatype": (
        {"inputs": [{"name": "IMAGE", "datatype": "FP32", "shape": [1, 1], "data": [1]}]},
        "BYTES",
    ),
    "length and shape disagree": (
        {
            "inputs": [
                {"name": "PIXELS", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.5]}
            ]
        },
        "elements",
    ),
    "a huge shape": (
        {
            "inputs": [
                {
                    "name": "PIXELS",
                    "datatype": "FP32",
                    "shape": [10**12, 3, 224, 224],
                    "data": [0.5],
                }
            ]
        },
        "elements",
    ),
    "unknown output": (
        {
            "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}],
            "outputs": [{"name": "LOGITS"}],
        },
        "LOGITS",
    ),
    "classification not positive": (
        {
            "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}],
            "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 0}}],
        },
        "positive",
    ),
    "undecodable image": (
        {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["AAAA"]}]},
        "image 0",
    ),
    "not base64": (
        {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]},
        "base64",
    ),
}


@pytest.mark.parametrize("case", BAD_REST_BODIES)
def test_bad_json_requests_are_400_naming_the_input(server: Server, case: str) -> None:
    body, named = BAD_REST_BODIES[case]
    answer = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", json=body, headers=auth(), timeout=60
    )
    assert answer.status_code == 400, answer.text
    assert named in answer.json()["error"]


@pytest.mark.parametrize(
    ("header_length", "binary_size", "trailing", "named"),
    [
        ("9999", 4, b"", "Inference-Header-Content-Length"),
        (None, 10**9, b"", "binary_data_size"),
        (None, 2, b"", "ends inside"),
        (None, 4, b"xx", "bytes after"),
    ],
)
def test_bad_binary_requests_are_400(
    server: Server, header_length: str | None, binary_size: int, trailing: bytes, named: str
) -> None:
    header = (
        b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], '
        b'"parameters": {"binary_data_size": %d}}]}' % binary_size
    )
    body = header + b"\x00\x00\x00\x00" + trailing  # one empty BYTES element
    headers = AUTH | {"Inference-Header-Content-Length": header_length or str(len(header))}
    answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert answer.status_code == 400 and named in answer.json()["error"]


async def test_calls_past_their_deadline_leave_the_service_serving(server: Server) -> None:
    unseen = [np.array([[resized_jpeg("chelsea", 0.5 + i / 10)]], np.object_) for i in range(4)]
    async with grpc_aio.InferenceServerClient(server.grpc) as client:  # type: ignore[attr-defined]
        late = await asyncio.gather(
            *(
                client.infer(MODEL, rpc_inputs(image), headers=auth(), client_timeout=0.001)
                for image in unseen
            ),
            return_exceptions=True,
        )
        answered = await client.infer(MODEL, rpc_inputs(images("astronaut")), headers=auth())
    # The client's timer or the server's own check may end the call first: either way the
    # status is DEADLINE_EXCEEDED (the details differ: "Deadline Exceeded" or the server's).
    assert all(
        isinstance(e, InferenceServerException) and e.status() == "StatusCode.DEADLINE_EXCEEDED"
        for e in late
    ), late
    assert answered.as_numpy("EMBEDDING").shape == (1, 1280)


def test_grpc_refuses_garbage_with_a_status_not_a_crash(server: Server) -> None:
    with grpc.insecure_channel(server.grpc) as channel:  # type: ignore[attr-defined]
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as failed:
            call(b"\xff\xff\xff garbage", metadata=tuple(AUTH.items()), timeout=10)
    # grpcio answers a message it cannot parse itself, before the servicer runs (UNKNOWN)
    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    assert "Error parsing message" in str(failed.value.details())
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_grpc_calls_may_ask_for_the_bulk_class_and_nothing_else(
    rpc: grpc_client.InferenceServerClient,
) -> None:
    bulk = rpc.infer(MODEL, rpc_inputs(images("rocket")), headers=auth() | {"x-priority": "bulk"})
    assert bulk.as_numpy("EMBEDDING").shape == (1, 1280)
    with pytest.raises(InferenceServerException) as refused:
        rpc.infer(MODEL, rpc_inputs(images("rocket")), headers=auth() | {"x-priority": "urgent"})
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'interactive' or 'bulk'" in str(refused.value)


def test_an_attached_head_is_an_output_of_its_own(
    server: Server, rpc: grpc_client.InferenceServerClient, tmp_path: Path
) -> None:
    fingerprint = httpx.get(f"{server.url}/readyz").json()["fingerprint"]
    head = write_head(tmp_path / "head", classes=7, dim=1280, base_fingerprint=fingerprint)
    attached = httpx.put(f"{server.url}/v1/heads/seven", json={"source": str(head)}, headers=auth())
    assert attached.status_code == 201, attached.text
    try:
        outputs = rpc.get_model_metadata(MODEL, headers=auth(), as_json=True)["outputs"]
        assert {"name": "head_seven", "datatype": "FP32", "shape": ["-1", "7"]} in outputs
        wanted = [
            grpc_client.InferRequestedOutput("head_seven"),
            grpc_client.InferRequestedOutput("EMBEDDING"),
        ]
        result = rpc.infer(MODEL, rpc_inputs(images("coffee")), outputs=wanted, headers=auth())
        probabilities = result.as_numpy("head_seven")
        assert probabilities.shape == (1, 7) and abs(float(probabilities.sum()) - 1) < 1e-4
        embedding = result.as_numpy("EMBEDDING")[0]
        # The head applied to the embedding this very answer carries.
        weight, bias = head_layer(head)
        logits = weight @ embedding + bias
        assert int(np.argmax(logits)) == int(np.argmax(probabilities[0]))
        top = [grpc_client.InferRequestedOutput("head_seven", class_count=2)]
        labels = rpc.infer(MODEL, rpc_inputs(images("coffee")), outputs=top, headers=auth())
        best = labels.as_numpy("head_seven")[0][0].decode()
        assert best.endswith(f":class-{int(np.argmax(logits))}")
    finally:
        httpx.delete(f"{server.url}/v1/heads/seven", headers=auth())


def head_layer(head: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(str(head / "model.safetensors"))
    return tensors["classifier.1.weight"], tensors["classifier.1.bias"]

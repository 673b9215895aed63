"""Traces across the service's processes, received by a real OTLP receiver: one classify
with HTTP workers is one trace whose spans come from the HTTP worker and the model worker,
parented through the RPC, with the request id; a search reaches the index worker in the same
way; a batch span links the requests it carried."""

from collections.abc import Iterator

import httpx
import pytest

from loadtest.common.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.e2e.server import Server, start_server
from tests.photos import jpeg

pytestmark = pytest.mark.e2e

WAIT_S = 60  # exports leave every 100 ms; this only bounds a broken pipeline


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiving = OtlpReceiver()
    yield receiving
    receiving.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Server]:
    env = {
        "RESNET_SERVE_WORKERS": "2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    started = start_server(tmp_path_factory.mktemp("traced"), env)
    yield started
    started.stop()


def trace_of(spans: list[ReceivedSpan], request_id: str) -> list[ReceivedSpan]:
    roots = [
        s for s in spans if s.attributes.get("request_id") == request_id and not s.parent_span_id
    ]
    return [s for s in spans if roots and s.trace_id == roots[0].trace_id]


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def role(span: ReceivedSpan) -> str:
    return str(span.resource.get("resnet_serve.role"))


def named(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [s for s in spans if s.name == name]
    return found


def test_a_classify_is_one_trace_across_the_http_and_model_workers(
    server: Server, receiver: OtlpReceiver
) -> None:
    upload = {"file": ("cup.jpg", jpeg("coffee"), "image/jpeg")}
    headers = {"x-request-id": "traced-classify-1"}
    assert httpx.post(f"{server.url}/v1/classify", files=upload, headers=headers).status_code == 200

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in trace_of(spans, "traced-classify-1")}
        return {"rpc infer_slot", "queue wait", "forward", "decode", "model"} <= names

    receiver.wait_for(complete, WAIT_S)
    spans = trace_of(receiver.spans, "traced-classify-1")
    root = next(s for s in spans if not s.parent_span_id)
    assert root.name == "POST /v1/classify" and role(root) == "http"
    assert root.attributes["http.response.status_code"] == 200
    model, rpc = named(spans, "model"), named(spans, "rpc infer_slot")
    assert root in ancestors(model, spans) and role(model) == "http"
    # The model worker's span is the HTTP worker's model span's child, through the RPC.
    assert rpc.parent_span_id == model.span_id and role(rpc) == "model-worker"
    assert rpc.attributes["request_id"] == "traced-classify-1"
    for name in ("queue wait", "forward"):
        assert named(spans, name).parent_span_id == rpc.span_id
    assert named(spans, "queue wait").end_ns <= named(spans, "forward").start_ns + 1_000_000
    # The batch that ran it is a span of its own, linked to the request it carried.
    receiver.wait_for(
        lambda got: any((rpc.trace_id, rpc.span_id) in s.links for s in got if s.name == "batch"),
        WAIT_S,
    )


def test_a_search_reaches_the_index_worker_in_the_same_trace(
    server: Server, receiver: OtlpReceiver
) -> None:
    upload = {"file": ("cup.jpg", jpeg("rocket"), "image/jpeg")}
    headers = {"x-request-id": "traced-search-1"}
    assert httpx.post(f"{server.url}/v1/search", files=upload, headers=headers).status_code == 200

    def reached(spans: list[ReceivedSpan]) -> bool:
        return any(role(s) == "index-worker" for s in trace_of(spans, "traced-search-1"))

    receiver.wait_for(reached, WAIT_S)
    spans = trace_of(receiver.spans, "traced-search-1")
    call = next(s for s in spans if role(s) == "index-worker" and s.name.startswith("rpc "))
    assert call.name == "rpc search"
    inner = next(s for s in spans if s.name == "index search")
    assert inner.parent_span_id == call.span_id
    # Probes are not traced.
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert not [s for s in receiver.spans if "readyz" in str(s)], [
        s for s in receiver.spans if "readyz" in str(s)
    ][:2]

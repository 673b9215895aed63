"""What tracing costs, and whether a request's spans account for its time (issue 38).

    python -m loadtest.bench.tracing_cost --weights random --clients 32 --seconds 20 --rounds 2

The service (torch fp32, batch 8, no result cache) is started twice per round, tracing off
and tracing on (exporting over OTLP/HTTP to a receiver in this process, every span decoded),
alternately, and loaded with --clients clients sending unique JPEGs; the figures are the
medians of the rounds. Then, from the traced runs, for each request whose trace arrived: the
time its spans account for (cache lookup, decode, model: the latter holds the queue wait and
the forward pass) against its HTTP span's end-to-end time.
Targets: tracing on costs <= 3% of throughput; for the median request the spans account for
>= 90% of its end-to-end time.
"""

import argparse
import statistics
from collections import defaultdict

from loadtest.common.load import measure_load
from loadtest.common.otlp_receiver import OtlpReceiver, ReceivedSpan
from loadtest.common.processes import fp32_batch8_env, free_port, start_service, stop

_PARTS = ("admission", "read body", "cache lookup", "decode", "model")


def throughput(env: dict[str, str], args: argparse.Namespace) -> float:
    port = free_port()
    service = start_service(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        return measure_load(url, "/v1/classify", args.clients, args.seconds, 5.0).ok_rps
    finally:
        stop(service)


def accounted(spans: list[ReceivedSpan]) -> list[float]:
    """Per traced classify: the share of its HTTP span's time that its parts cover."""
    by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    shares = []
    for trace in by_trace.values():
        roots = [s for s in trace if not s.parent_span_id and s.name == "POST /v1/classify"]
        if len(roots) != 1:
            continue
        (root,) = roots
        # The request's own steps in the HTTP process (each directly under the request's
        # span or the framework's endpoint span), not the spans nested in them.
        steps = {s.span_id for s in trace if s.name in _PARTS}
        parts = [s for s in trace if s.name in _PARTS and s.parent_span_id not in steps]
        if {s.name for s in parts} >= {"decode", "model"}:
            covered = sum(s.end_ns - s.start_ns for s in parts)
            shares.append(covered / (root.end_ns - root.start_ns))
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = fp32_batch8_env(args.weights)
    receiver = OtlpReceiver()
    traced = base | {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    off, on = [], []
    try:
        for round_number in range(args.rounds):
            off.append(throughput(base, args))
            on.append(throughput(traced, args))
            print(f"round {round_number + 1}: off {off[-1]:.2f}/s, on {on[-1]:.2f}/s", flush=True)
        shares = accounted(list(receiver.spans))
    finally:
        receiver.stop()
    cost = 1 - statistics.median(on) / statistics.median(off)
    print(f"tracing off {statistics.median(off):.2f}/s, on {statistics.median(on):.2f}/s")
    print(f"{'PASS' if cost <= 0.03 else 'FAIL'} tracing costs {cost:.1%} of throughput; <= 3%")
    if shares:
        median = statistics.median(shares)
        low = statistics.quantiles(shares, n=10)[0] if len(shares) > 1 else median
        print(
            f"{'PASS' if median >= 0.9 else 'FAIL'} {len(shares)} traced requests: their spans "
            f"cover {median:.1%} of the end-to-end time at the median, {low:.1%} at p10; >= 90%"
        )
    else:
        print("FAIL no complete trace arrived")


if __name__ == "__main__":
    main()

"""Serving through a retry storm, bulk work beside interactive work, and a latency target
below two batch times (issue 37).

    python -m loadtest.bench.retry_storm --weights random --target-ms 1000 --seconds 25

One service (torch fp32, batch 8, no result cache, one HTTP worker, RESNET_SERVE_TARGET_
LATENCY_MS), unique JPEGs, every group of clients in load processes of its own, each round
measured over one shared window:
1. polite: 72 clients that honour Retry-After (plus jitter);
2. storm: 8 of those beside 64 that retry 50 ms after every 429 and ignore Retry-After;
3. bulk: 8 interactive clients (/v1/classify) beside 12 bulk ones (/v1/classify/batch with 4
   images each, the class /v1/items/batch imports have too) sending at full speed;
4. low target: the service again with the target at half of a batch of 8's measured time,
   16 polite clients; its throughput beside round 1's.
Targets: storm goodput >= 0.8 of the polite round's; the 8 polite clients get at least
their fair share (8/72) of what is served; accepted p99 within the target; a polite
client's refusal p99 <= 10 ms; bulk round: interactive p99 within the target and >= 99% of
interactive requests served; low target: accepted p99 <= that target. Nothing hangs: every
request ends in a status (counted), and no 5xx.
"""

import argparse
from typing import Any

import psutil

from loadtest.common.load import Group, Samples, drive_groups, percentiles
from loadtest.common.processes import fp32_batch8_env, free_port, start_service, stop
from loadtest.common.scrape import scrape, step_metrics

EARLY_RETRY_S = 0.05
REFUSAL_BOUND_MS = 10.0


def service_env(args: argparse.Namespace, target_ms: float) -> dict[str, str]:
    return fp32_batch8_env(
        args.weights,
        RESNET_SERVE_WORKERS="1",
        RESNET_SERVE_TARGET_LATENCY_MS=str(target_ms),
        RESNET_SERVE_MAX_BATCH_FILES="8",
    )


def p99_ms(seconds: list[float]) -> float:
    return 1000 * percentiles(seconds)[98]


def served(samples: Samples) -> int:
    return samples.statuses.get("200", 0)


def event_loop_cpu_s(pid: int) -> float:
    """CPU seconds of the service's main thread: its event loop, which parses, admits and
    refuses requests (decoding and the model run on threads of their own)."""
    main = next(t for t in psutil.Process(pid).threads() if t.id == pid)
    return float(main.user_time + main.system_time)


def run_round(
    url: str, pid: int, name: str, groups: list[Group], args: argparse.Namespace
) -> tuple[list[Samples], Any]:
    before, loop_before = scrape(url), event_loop_cpu_s(pid)
    seen = drive_groups(url, groups, args.seconds, args.warmup)
    loop_s = event_loop_cpu_s(pid) - loop_before
    step = step_metrics(before, scrape(url), args.seconds + args.warmup)
    answered = sum(sum(samples.statuses.values()) for samples in seen)
    for group, samples in zip(groups, seen, strict=True):
        behaviour = (
            f"retry {EARLY_RETRY_S * 1000:.0f} ms after 429"
            if group.early_retry_s
            else "honour Retry-After"
        )
        print(
            f"{name}: {group.clients} x {group.path} ({behaviour}): "
            f"{served(samples) / args.seconds:.2f} ok/s, p99 {p99_ms(samples.latencies):.0f} ms, "
            f"refusal p99 {p99_ms(samples.refusals):.1f} ms, {dict(samples.statuses)}",
            flush=True,
        )
    print(
        f"{name} at the server: mean batch {step.mean_batch_size:.2f}, "
        f"{step.server_cpu_cores:.2f} cores, {step.rejected} refused by the model's queue, "
        f"{step.server_errors} 5xx; event loop {loop_s:.1f} CPU s, about "
        f"{1000 * loop_s / max(1, answered):.2f} ms per request answered in the window",
        flush=True,
    )
    return seen, step


def batch_time_s(url: str) -> float:
    """A batch of 8's time under load: the measured time per image of the batches so far
    (from /metrics), times 8."""
    samples = scrape(url)
    run_s = sum(v for (n, _), v in samples.items() if n == "batcher_run_seconds_sum")
    images = sum(v for (n, _), v in samples.items() if n == "batcher_batch_size_sum")
    return 8 * run_s / images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--weights", help="RESNET_SERVE_WEIGHTS")
    parser.add_argument("--target-ms", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    checks: list[tuple[str, bool]] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(service_env(args, args.target_ms), port)
    try:
        (polite,), _ = run_round(url, service.pid, "polite", [Group(72, processes=2)], args)
        batch_s = batch_time_s(url)
        storm, storm_step = run_round(
            url,
            service.pid,
            "storm",
            [Group(8), Group(64, back_off=False, early_retry_s=EARLY_RETRY_S, processes=2)],
            args,
        )
        bulk, bulk_step = run_round(
            url,
            service.pid,
            "bulk",
            [
                Group(8),
                Group(12, path="/v1/classify/batch", files=4, processes=2),
            ],
            args,
        )
    finally:
        stop(service)
    low_target_ms = 1000 * batch_s / 2
    print(f"a batch of 8 took {1000 * batch_s:.0f} ms: low target {low_target_ms:.0f} ms")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(service_env(args, low_target_ms), port)
    try:
        (low,), low_step = run_round(url, service.pid, "low target", [Group(16)], args)
        limits = [v for (n, _), v in scrape(url).items() if n == "batcher_batch_size_limit"]
        limit = min(limits, default=float("nan"))
        print(f"low target: batch limit {limit:.0f}", flush=True)
    finally:
        stop(service)

    polite_goodput = served(polite) / args.seconds
    storm_goodput = (served(storm[0]) + served(storm[1])) / args.seconds
    polite_share = served(storm[0]) / max(1, served(storm[0]) + served(storm[1]))
    accepted = storm[0].latencies + storm[1].latencies
    interactive = bulk[0]
    answered = sum(interactive.statuses.values())
    checks += [
        (
            f"storm goodput {storm_goodput:.1f}/s = {storm_goodput / polite_goodput:.2f} of the "
            f"polite round's {polite_goodput:.1f}/s; >= 0.8",
            storm_goodput >= 0.8 * polite_goodput,
        ),
        (
            f"the 8 polite clients got {polite_share:.2f} of what was served; fair share "
            f"{8 / 72:.2f}",
            polite_share >= 8 / 72,
        ),
        (
            f"storm accepted p99 {p99_ms(accepted):.0f} ms <= {args.target_ms:.0f} ms",
            p99_ms(accepted) <= args.target_ms,
        ),
        (
            f"polite clients' refusal p99: {p99_ms(polite.refusals):.1f} ms in the polite round, "
            f"{len(storm[0].refusals)} refusals in the storm (p99 {p99_ms(storm[0].refusals):.1f} "
            f"ms); <= {REFUSAL_BOUND_MS:.0f} ms",
            all(
                not r or p99_ms(r) <= REFUSAL_BOUND_MS for r in (polite.refusals, storm[0].refusals)
            ),
        ),
        (
            f"bulk round: interactive p99 {p99_ms(interactive.latencies):.0f} ms <= "
            f"{args.target_ms:.0f} ms",
            p99_ms(interactive.latencies) <= args.target_ms,
        ),
        (
            f"bulk round: {served(interactive)} of {answered} interactive requests served; >= 99%",
            served(interactive) >= 0.99 * answered,
        ),
        (
            f"low target: accepted p99 {p99_ms(low.latencies):.0f} ms <= {low_target_ms:.0f} "
            f"ms, {served(low) / args.seconds:.1f}/s beside {polite_goodput:.1f}/s unconstrained",
            p99_ms(low.latencies) <= low_target_ms,
        ),
        (
            "no 5xx in any round",
            storm_step.server_errors + bulk_step.server_errors + low_step.server_errors == 0,
        ),
    ]
    for line, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'} {line}")


if __name__ == "__main__":
    main()

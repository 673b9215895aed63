"""The first minutes after a start, as a new user meets them: does the background backend
search cost serving its latency target and its throughput?

    python -m loadtest.bench.search_under_load [--seconds 20] [--env RESNET_SERVE_WEIGHTS=random]

Each row starts `python -m service serve` on a fresh data directory (so the search runs) with
default settings (plus --env) and loads it as soon as /readyz says 200; "no search" pins
BACKEND=torch PRECISION=fp32, so no search runs:
1. 64 clients honouring Retry-After, TARGET_LATENCY_MS=1000, unique JPEGs: accepted p99,
   with the search running and with no search (target: <= 1.5x the target);
2. cache hits (one image again and again), 32 clients, WORKERS=2 against WORKERS=1, with the
   search running and with no search (target: >= 1.1x);
3. unique JPEGs, 16 clients, back-to-back windows for --load-seconds (or until a winner
   serves): images per second and the backend in each window; then the load stops and the
   search finishes in the quiet: the seconds until it decided, and the winner's throughput;
4. `resnet-serve backends decide --out DIR` beside row 3's data directory (it reads the
   decision row 3's search cached), then a fresh start with BACKEND_DECISIONS=DIR: the
   backend it is ready on and its images per second (target: the winner, from the first
   request).
Only loopback addresses.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, readiness, start_service, stop

_NO_SEARCH = {"RESNET_SERVE_BACKEND": "torch", "RESNET_SERVE_PRECISION": "fp32"}


def fresh(env: dict[str, str], **overrides: str) -> dict[str, str]:
    data = tempfile.mkdtemp(prefix="search-under-load-")
    return env | overrides | {"RESNET_SERVE_DATA_DIR": data}


def measured(env: dict[str, str], run: "Run") -> tuple[LoadResult, str]:
    """Start a service, run `run` on it at once, stop it; also what /readyz said after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service = start_service(env, port, ready_timeout_s=900)
    try:
        result = run(url)
        return result, str(readiness(url).get("backend_search"))
    finally:
        stop(service)


class Run:
    def __init__(self, clients: int, seconds: float, *, repeat: bool, back_off: bool) -> None:
        self.clients, self.seconds, self.repeat, self.back_off = clients, seconds, repeat, back_off

    def __call__(self, url: str) -> LoadResult:
        processes = 2 if self.clients > 32 else 1
        return measure_load(
            url,
            "/v1/classify",
            self.clients,
            self.seconds,
            0.0,
            repeat=self.repeat,
            processes=processes,
            back_off=self.back_off,
        )


def latency_target_row(env: dict[str, str], seconds: float) -> None:
    polite = Run(64, seconds, repeat=False, back_off=True)
    target = {"RESNET_SERVE_TARGET_LATENCY_MS": "1000"}
    for name, extra in (("search running", {}), ("no search", _NO_SEARCH)):
        result, search = measured(fresh(env, **target, **extra), polite)
        print(
            f"1. 64 polite clients, target 1 s, {name}: accepted p99 {result.p99_ms:.0f} ms "
            f"({result.p99_ms / 1000:.2f}x the target), {result.ok_rps:.1f} rps, "
            f"{result.statuses}; search after: {search}",
            flush=True,
        )


def cache_hit_row(env: dict[str, str], seconds: float) -> None:
    hits = Run(32, seconds, repeat=True, back_off=False)
    for name, extra in (("search running", {}), ("no search", _NO_SEARCH)):
        rps = {}
        for workers in ("1", "2"):
            result, _ = measured(fresh(env, RESNET_SERVE_WORKERS=workers, **extra), hits)
            rps[workers] = result.ok_rps
        print(
            f"2. cache hits, 32 clients, {name}: WORKERS=2 {rps['2']:.0f} against WORKERS=1 "
            f"{rps['1']:.0f} rps: {rps['2'] / rps['1']:.2f}x (target >= 1.1x)",
            flush=True,
        )


def until_the_winner_serves(env: dict[str, str], load_s: float, timeout_s: float) -> Path:
    """Row 3; returns the data directory, whose model cache holds the decision. 16 clients
    for `load_s` (or until a winner other than the reference serves, provisionally when the
    search could only measure under load); then the load stops, and the search, in the
    quiet, finishes its decision."""
    env = fresh(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    service = start_service(env, port, ready_timeout_s=900)
    try:
        reference = readiness(url)["backend"]
        print(f"3. ready after {time.monotonic() - started:.0f} s on {reference}", flush=True)
        while time.monotonic() - started < load_s:
            window = measure_load(url, "/v1/classify", 16, 10.0, 0.0)
            ready = readiness(url)
            search = str(ready["backend_search"])
            print(
                f"   t={time.monotonic() - started:4.0f} s: {window.ok_rps:5.1f} img/s, p99 "
                f"{window.p99_ms:.0f} ms on {ready['backend']}; {search[:110]}",
                flush=True,
            )
            if search.startswith("done") or ready["backend"] != reference:
                took = time.monotonic() - started
                print(f"3. {ready['backend']} served under load, {took:.0f} s after the start")
                break
        quiet_from = time.monotonic()
        while time.monotonic() - started < timeout_s:  # quiet now: the search ends
            final = readiness(url)
            if str(final["backend_search"]).startswith("done"):
                print(
                    f"3. load stopped at t={quiet_from - started:.0f} s; decided "
                    f"{time.monotonic() - quiet_from:.0f} s later: {final['backend']} at batch "
                    f"{final['max_batch_size']} ({final['backend_choice'][:240]})",
                    flush=True,
                )
                break
            time.sleep(2)
        unique = measure_load(url, "/v1/classify", 16, 20.0, 2.0)
        print(
            f"3. then 16 clients: {unique.ok_rps:.1f} img/s, p99 {unique.p99_ms:.0f} ms", flush=True
        )
    finally:
        stop(service)
    return Path(env["RESNET_SERVE_DATA_DIR"])


def shipped_row(env: dict[str, str], searched: Path, seconds: float) -> None:
    shipped = Path(tempfile.mkdtemp(prefix="decisions-"))
    subprocess.run(
        [sys.executable, "-m", "service", "backends", "decide", "--out", str(shipped)],
        env=env | {"RESNET_SERVE_DATA_DIR": str(searched)},
        check=True,
    )
    started = time.monotonic()
    unique = Run(16, seconds, repeat=False, back_off=False)
    result, search = measured(fresh(env, RESNET_SERVE_BACKEND_DECISIONS=str(shipped)), unique)
    print(
        f"4. a start with the shipped decision: ready and loaded in "
        f"{time.monotonic() - started:.0f} s, {result.ok_rps:.1f} img/s; search: {search}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE over the defaults (repeatable)"
    )
    parser.add_argument("--rows", default="1,2,3", help="which rows (4 runs with 3)")
    parser.add_argument("--swap-timeout", type=float, default=1800.0, help="row 3, seconds")
    parser.add_argument(
        "--load-seconds", type=float, default=300.0, help="row 3: 16 clients this long at most"
    )
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
    env = base | dict(item.split("=", 1) for item in args.env)
    rows = set(args.rows.split(","))
    if "1" in rows:
        latency_target_row(env, args.seconds)
    if "2" in rows:
        cache_hit_row(env, args.seconds)
    if "3" in rows:
        searched = until_the_winner_serves(env, args.load_seconds, args.swap_timeout)
        shipped_row(env, searched, args.seconds)


if __name__ == "__main__":
    main()

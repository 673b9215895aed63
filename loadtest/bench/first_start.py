"""A first start as a new user makes it: fresh data directory, default settings.

    python -m loadtest.bench.first_start                     # default settings, as scripts/serve
    python -m loadtest.bench.first_start --seconds 20 --env RESNET_SERVE_WEIGHTS=random

Starts `python -m service serve` with nothing cached and reports:
1. seconds until /readyz answers 200 (model load and one warm-up included; target <= 30 s);
2. p99 at 4 clients while the background backend search runs, against the p99 of the same
   load on the reference backend with no search (a second service, pinned to torch fp32,
   measured after the first has stopped; target: within 2x);
3. 16 clients, back-to-back windows, from then until a few seconds after the swap to the
   search's winner: failed requests (target 0);
4. seconds from the start until the faster backend serves.
Unique 500-px JPEGs; only loopback addresses.
"""

import argparse
import os
import tempfile
import time

from loadtest.common.load import LoadResult, measure_load
from loadtest.common.processes import free_port, readiness, start_service, stop


def _failed(result: LoadResult) -> int:
    return sum(count for status, count in result.statuses.items() if status != "200")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per load measurement")
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE over the defaults (repeatable)"
    )
    parser.add_argument("--swap-timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument(
        "--quiet-search",
        action="store_true",
        help="no load while the candidates are tried: the 16 clients start with the last one",
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.env)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RESNET_SERVE_")}
    env = base | overrides | {"RESNET_SERVE_DATA_DIR": tempfile.mkdtemp(prefix="first-start-")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    service = start_service(env, port, log_level="info", ready_timeout_s=600)
    try:
        ready_s = time.monotonic() - started
        ready = readiness(url)
        print(f"ready after {ready_s:.1f} s (target <= 30 s) on {ready['backend']}")
        print(f"  backend_search: {ready['backend_search']}")
        searching = measure_load(url, "/v1/classify", 4, args.seconds, 2.0)
        still = str(readiness(url)["backend_search"])
        print(
            f"4 clients during the search: p50 {searching.p50_ms:.0f} ms, "
            f"p99 {searching.p99_ms:.0f} ms, {searching.ok_rps:.1f} rps, {searching.statuses}"
            f"{'' if still.startswith('searching') else ' (the search ended during it)'}"
        )
        windows: list[LoadResult] = []
        swapped_at = None
        deadline = started + args.swap_timeout
        while args.quiet_search and time.monotonic() < deadline:  # bounded by the deadline
            search = str(readiness(url)["backend_search"])
            tried = search.split(" candidates tried")[0].split(": ")[-1].split(" of ")
            if search.startswith("done") or (len(tried) == 2 and tried[0] == tried[1]):
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            windows.append(measure_load(url, "/v1/classify", 16, 5.0, 0.0))
            status = str(readiness(url)["backend_search"])
            if swapped_at is None and status.startswith("done"):
                swapped_at = time.monotonic() - started
                print(f"search done after {swapped_at:.0f} s: {status}")
            elif swapped_at is not None:
                break  # one more window after the swap
        final = readiness(url)
        failed = sum(_failed(w) for w in windows)
        answered = sum(sum(w.statuses.values()) for w in windows)
        print(
            f"16 clients across the swap: {failed} failed of {answered} "
            f"(target 0); now on {final['backend']} at batch {final['max_batch_size']}"
        )
    finally:
        stop(service)
    reference_env = env | {
        "RESNET_SERVE_BACKEND": "torch",
        "RESNET_SERVE_PRECISION": "fp32",
        "RESNET_SERVE_MAX_BATCH_SIZE": str(ready["max_batch_size"]),
    }
    reference_service = start_service(reference_env, port, ready_timeout_s=600)
    try:
        reference = measure_load(url, "/v1/classify", 4, args.seconds, 2.0)
    finally:
        stop(reference_service)
    ratio = searching.p99_ms / reference.p99_ms
    print(
        f"4 clients on the reference with no search: p99 {reference.p99_ms:.0f} ms; during the "
        f"search {ratio:.2f}x (target <= 2x)"
    )
    if swapped_at is not None:
        print(f"the faster backend served {swapped_at:.0f} s after the start (was 118 s)")


if __name__ == "__main__":
    main()

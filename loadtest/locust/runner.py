"""`loadtest/run`: start redis-server and the service, run locust headless at several user
counts, and write CSV, HTML and a markdown summary into a results folder.

    loadtest/run --scenario Mixed --users 1,8,32 --seconds 60
    RESNET_SERVE_WEIGHTS=random loadtest/run --scenario ClassifyUnique --users 32
    loadtest/run --shape burst -- --burst-peak 64      # arguments after -- go to locust

The service is configured by the usual RESNET_SERVE_* environment variables. Each run gets a
fresh index; converted models are kept in `--model-cache`, so only the first run pays for the
`auto` backend search. Everything started is stopped again, also on Ctrl-C or failure. The
exit status is 0 only if every request of every step succeeded.
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from loadtest.common.processes import free_port, start_redis, start_service, stop
from loadtest.common.report import (
    StepResult,
    markdown,
    read_locust_failures,
    read_locust_stats,
)
from loadtest.common.scrape import scrape, step_metrics

LOADTEST_DIR = Path(__file__).resolve().parent
SCENARIOS = ("ClassifyUnique", "ClassifyRepeated", "Search", "AddItems", "Mixed")


def parse_args(argv: list[str]) -> argparse.Namespace:
    locust_args: list[str] = []
    if "--" in argv:
        argv, locust_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="loadtest/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="Mixed")
    parser.add_argument(
        "--users", default="1,8,32", help="comma-separated user counts, one step each"
    )
    parser.add_argument("--seconds", type=float, default=60, help="length of each step")
    parser.add_argument(
        "--shape",
        choices=("steps", "burst"),
        default="steps",
        help="burst: loadtest/locust/burst.py",
    )
    parser.add_argument("--no-redis", action="store_true", help="use the in-process cache")
    parser.add_argument("--out", type=Path, help="results folder (default results/loadtest-*)")
    parser.add_argument("--model-cache", type=Path, default=Path("results/model-cache"))
    parser.add_argument("--ready-timeout", type=float, default=900, help="seconds to start")
    args = parser.parse_args(argv)
    try:
        args.user_counts = [int(n) for n in args.users.split(",")]
    except ValueError:
        parser.error(f"--users: {args.users!r} is not a comma-separated list of integers")
    if not args.user_counts or min(args.user_counts) < 1:
        parser.error("--users: every count must be at least 1")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    args.locust_args = locust_args
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started_at = datetime.datetime.now(datetime.UTC)
    out: Path = args.out or Path("results") / f"loadtest-{started_at:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)  # Ctrl-C already raises KeyboardInterrupt
    processes: list[subprocess.Popen[bytes]] = []
    try:
        env = _service_env(args, out, processes)
        port = free_port()
        print(f"starting the service (log: {out / 'service.log'}) ...", flush=True)
        with (out / "service.log").open("wb") as log:
            processes.append(
                start_service(
                    env, port, log=log, log_level="info", ready_timeout_s=args.ready_timeout
                )
            )
        url = f"http://127.0.0.1:{port}"
        service = httpx.get(f"{url}/readyz", timeout=10).json()
        steps = [
            _run_step(args, url, out, label, users, processes) for label, users in _steps(args)
        ]
        config = {k: v for k, v in env.items() if k.startswith("RESNET_SERVE_")}
        config.pop("RESNET_SERVE_DATA_DIR")
        if "RESNET_SERVE_REDIS_URL" in config:
            config["RESNET_SERVE_REDIS_URL"] = "local redis-server"
        summary = markdown(
            f"Load test: {args.scenario}, {started_at:%Y-%m-%d %H:%M} UTC",
            shlex.join(["loadtest/run", *argv]),
            service,
            config,
            steps,
        )
        (out / "summary.md").write_text(summary)
        (out / "summary.json").write_text(
            json.dumps({"service": service, "steps": [s.as_dict() for s in steps]}, indent=2)
        )
        print(summary)
        print(f"results in {out}")
        failed = any(s.total.failures or s.locust_exit_code for s in steps)
        return 1 if failed else 0
    except KeyboardInterrupt:
        # A second Ctrl-C (or SIGTERM) must not cut the clean-up short and leak processes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("interrupted: stopping everything this run started", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"loadtest/run: {exc}", file=sys.stderr)
        return 2
    finally:
        for process in reversed(processes):
            stop(process)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _service_env(
    args: argparse.Namespace, out: Path, processes: list[subprocess.Popen[bytes]]
) -> dict[str, str]:
    data = out / "data"
    data.mkdir(exist_ok=True)
    args.model_cache.mkdir(parents=True, exist_ok=True)
    models = data / "models"
    if not models.exists():
        models.symlink_to(args.model_cache.resolve(), target_is_directory=True)
    env = dict(os.environ) | {"RESNET_SERVE_DATA_DIR": str(data)}
    if args.no_redis:
        env.pop("RESNET_SERVE_REDIS_URL", None)
    else:
        redis_port = free_port()
        processes.append(start_redis(redis_port))
        env["RESNET_SERVE_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    return env


def _steps(args: argparse.Namespace) -> list[tuple[str, int]]:
    if args.shape == "burst":
        return [("burst", 0)]
    return [(f"{users} users", users) for users in args.user_counts]


def _run_step(
    args: argparse.Namespace,
    url: str,
    out: Path,
    label: str,
    users: int,
    processes: list[subprocess.Popen[bytes]],
) -> StepResult:
    name = label.replace(" ", "-")
    prefix = out / name
    locustfiles = [LOADTEST_DIR / "locustfile.py"]
    command = [sys.executable, "-m", "locust", "--headless", "--only-summary"]
    if args.shape == "burst":
        locustfiles.append(LOADTEST_DIR / "burst.py")
    else:
        command += ["-u", str(users), "-r", str(users), "-t", f"{args.seconds:g}s"]
    command += ["-f", ",".join(map(str, locustfiles)), "--host", url, "--stop-timeout", "30"]
    command += ["--csv", str(prefix), "--html", f"{prefix}.html", *args.locust_args]
    command.append(args.scenario)
    print(f"step {label}: {shlex.join(command)}", flush=True)
    before, children_before = scrape(url), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with (out / f"{name}.locust.log").open("wb") as log:
        locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        processes.append(locust)
        exit_code = locust.wait()
        processes.remove(locust)
    wall_s = time.monotonic() - started
    after, children_after = scrape(url), resource.getrusage(resource.RUSAGE_CHILDREN)
    if not Path(f"{prefix}_stats.csv").exists():
        raise RuntimeError(f"locust wrote no results; see {out / f'{name}.locust.log'}")
    total, by_request = read_locust_stats(prefix)
    locust_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    return StepResult(
        label=label,
        seconds=round(wall_s, 1),
        total=total,
        by_request=by_request,
        failures=read_locust_failures(prefix),
        server=step_metrics(before, after, wall_s),
        locust_cpu_cores=locust_cpu / wall_s,
        locust_exit_code=exit_code,
    )


if __name__ == "__main__":
    sys.exit(main())

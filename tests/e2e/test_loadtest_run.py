"""`loadtest/run` end to end: the CI smoke load test, and cleaning up after Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.server import LITE0_ENV
from tests.signals import default_ctrl_c

pytestmark = pytest.mark.e2e

RUN = Path(__file__).parents[2] / "loadtest" / "run"


def run_env(tmp_path: Path) -> dict[str, str]:
    env = os.environ | LITE0_ENV
    env.pop("RESNET_SERVE_DATA_DIR", None)
    return env | {"PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(300)
def test_smoke_load_test_has_no_errors(tmp_path: Path) -> None:
    """A few users of the mixed profile for 15 s: any error response fails the build."""
    out = tmp_path / "results"
    command = [str(RUN), "--scenario", "Mixed", "--users", "4", "--seconds", "8"]
    command += ["--out", str(out), "--model-cache", str(tmp_path / "models")]

    finished = subprocess.run(command, env=run_env(tmp_path), capture_output=True, timeout=280)

    assert finished.returncode == 0, finished.stdout.decode()[-3000:] + finished.stderr.decode()
    summary = json.loads((out / "summary.json").read_text())
    (step,) = summary["steps"]
    assert step["total"]["requests"] >= 30 and step["total"]["failures"] == 0
    assert {r["name"] for r in step["by_request"]} >= {
        "classify (unique)",
        "classify (repeated)",
        "search",
        "add item",
    }
    assert step["server"]["batches"] > 0 and step["server"]["cache_hit_ratio"] > 0
    assert (out / "4-users.html").stat().st_size > 0
    report = (out / "summary.md").read_text()
    assert "| 4 users |" in report and "local redis-server" in report


@pytest.mark.timeout(180)
def test_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    command = [str(RUN), "--users", "2", "--seconds", "120", "--out", str(tmp_path / "r")]
    command += ["--model-cache", str(tmp_path / "models")]
    with subprocess.Popen(
        command,
        env=run_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_ctrl_c,
    ) as runner:
        assert runner.stdout is not None
        for line in runner.stdout:  # bounded by the test timeout
            if line.startswith(b"step "):
                break
        time.sleep(3)  # locust is running now
        children = psutil.Process(runner.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert "redis-server" in names and "service serve" in names and "locust" in names

        runner.send_signal(signal.SIGINT)

        # 130 from its handler; -SIGINT when the interrupt escaped it (Python then exits by
        # the signal), which once happened under a loaded suite: either way it was Ctrl-C,
        # and what counts is below: nothing it started is left.
        assert runner.wait(timeout=90) in (130, -signal.SIGINT)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [child.cmdline() for child in alive]


@pytest.mark.timeout(180)
def test_ctrl_c_while_the_service_starts_stops_it_too(tmp_path: Path) -> None:
    command = [str(RUN), "--users", "2", "--out", str(tmp_path / "r")]
    command += ["--model-cache", str(tmp_path / "models")]
    with subprocess.Popen(
        command, env=run_env(tmp_path), stdout=subprocess.DEVNULL, preexec_fn=default_ctrl_c
    ) as runner:
        children: list[psutil.Process] = []
        while not any("service serve" in " ".join(c.cmdline()) for c in children):
            time.sleep(0.1)  # bounded by the test timeout
            children = psutil.Process(runner.pid).children(recursive=True)
        assert not (tmp_path / "r" / "summary.json").exists()  # still starting

        runner.send_signal(signal.SIGINT)

        # 130 from its handler; -SIGINT when the interrupt escaped it (Python then exits by
        # the signal), which once happened under a loaded suite: either way it was Ctrl-C,
        # and what counts is below: nothing it started is left.
        assert runner.wait(timeout=90) in (130, -signal.SIGINT)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [child.cmdline() for child in alive]


LAUNCHER = """
import sys
from loadtest.common.processes import free_port, start_service
service = start_service(dict(__import__("os").environ), free_port())
print(service.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_a_service_stops_when_the_benchmark_that_started_it_is_killed(tmp_path: Path) -> None:
    """A benchmark killed by its own timeout (kill -9: no clean-up) leaves no service behind."""
    env = run_env(tmp_path) | {"RESNET_SERVE_DATA_DIR": str(tmp_path / "data")}
    with subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as launcher:
        assert launcher.stdout is not None
        service = psutil.Process(int(launcher.stdout.readline()))
        assert service.is_running()
        launcher.kill()
    try:
        service.wait(timeout=60)
    except psutil.TimeoutExpired:
        service.kill()
        pytest.fail("the service outlived the process that started it")

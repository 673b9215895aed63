"""Start the service (and a redis-server) as child processes for benchmarks."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import httpx

from service.parent_death import signal_on_parent_death

# How benchmarks, tests and the container (Dockerfile CMD) start the service: one command.
SERVICE_COMMAND = ("python", "-m", "service", "serve")
# EfficientNet-Lite0 with its real offline weights on the reference backend: correct answers
# and fast enough for thousands of requests on 2 cores.
LITE0_ENV = {
    "RESNET_SERVE_MODEL": "tf_efficientnet_lite0",
    "RESNET_SERVE_WEIGHTS": "lite0-package",
    "RESNET_SERVE_BACKEND": "torch",
    "RESNET_SERVE_PRECISION": "fp32",
    "RESNET_SERVE_MAX_BATCH_SIZE": "8",
    "RESNET_SERVE_GRPC_PORT": "0",  # a benchmark that wants gRPC gives it a free port
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(
    env: dict[str, str],
    port: int,
    *,
    log: IO[bytes] | None = None,
    log_level: str = "warning",
    ready_timeout_s: float = 180,
) -> subprocess.Popen[bytes]:
    """`resnet-serve serve` on 127.0.0.1:port, returned once /readyz answers 200.

    Output goes to `log` when given. Raises RuntimeError if the service exits or is not
    ready in time; the process is killed then, and on Ctrl-C while waiting. If the caller
    dies (a benchmark killed by its own timeout), the service is sent SIGTERM and stops.
    """
    process = subprocess.Popen(
        [
            sys.executable,
            *SERVICE_COMMAND[1:],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            log_level,
        ],
        env=env,
        stdout=log,
        stderr=log,
        preexec_fn=_terminate_with_parent,
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return _wait_until_ready(process, ready, ready_timeout_s, "service")


def _terminate_with_parent() -> None:
    """In the child before exec (Linux; elsewhere a killed caller leaves it running). Ctrl-C
    stops the service too, even when its starter runs as a background job (which inherits
    an ignored SIGINT, and passes it on through exec)."""
    signal_on_parent_death(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def readiness(url: str, timeout_s: float = 60) -> dict[str, Any]:
    """/readyz's answer once it is 200. With HTTP workers, each answers 503 until it reaches
    the model, so the one that answered start_service may not be the one asked next."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        answer = httpx.get(f"{url}/readyz", timeout=10)
        if answer.status_code == 200 or time.monotonic() > deadline:
            answer.raise_for_status()
            body: dict[str, Any] = answer.json()
            return body
        time.sleep(0.2)


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on 127.0.0.1:port (no persistence)."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed")
    process = subprocess.Popen(
        [
            executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    return _wait_until_ready(process, ready, 10, "redis-server")


def _wait_until_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout_s: float, name: str
) -> subprocess.Popen[bytes]:
    """Poll `ready` until it holds; on any failure, Ctrl-C included, kill the process: the
    caller owns it only once it is returned."""
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # bounded wait for start-up
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}")
            if ready():
                return process
            time.sleep(0.2)  # also after a 503: no busy loop against a loading server
        raise RuntimeError(f"{name} not ready in {timeout_s} s")
    except BaseException:
        process.kill()
        process.wait(timeout=30)
        raise


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def service_at(url: str | None, env: dict[str, str]) -> Iterator[tuple[str, int | None]]:
    """`url` when given; else a service started with `env` over this environment (its own
    data directory) on a free loopback port, stopped afterwards. Yields the URL and the
    started service's pid (None for a given URL)."""
    if url is not None:
        yield url, None
        return
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="resnet-serve-")
    service = start_service(os.environ | env | {"RESNET_SERVE_DATA_DIR": data_dir}, port)
    try:
        yield f"http://127.0.0.1:{port}", service.pid
    finally:
        stop(service)


def fp32_batch8_env(weights: str | None, **extra: str) -> dict[str, str]:
    """The benchmarks' service: this environment, torch fp32, batch 8, no result cache (every
    image reaches the model), no web page; `weights` as RESNET_SERVE_WEIGHTS when given."""
    env = os.environ | {
        "RESNET_SERVE_BACKEND": "torch",
        "RESNET_SERVE_PRECISION": "fp32",
        "RESNET_SERVE_MAX_BATCH_SIZE": "8",
        "RESNET_SERVE_CACHE_MEMORY_BYTES": "0",
        "RESNET_SERVE_UI": "false",
    }
    if weights:
        env["RESNET_SERVE_WEIGHTS"] = weights
    return env | extra

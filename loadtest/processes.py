"""Start the service (and a redis-server) as child processes for benchmarks."""

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO

import httpx

# How benchmarks, tests and the container (Dockerfile CMD) start the service: one command.
SERVICE_COMMAND = ("python", "-m", "service", "serve")


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
    ready in time; the process is killed then, and on Ctrl-C while waiting.
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
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    return _wait_until_ready(process, ready, ready_timeout_s, "service")


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

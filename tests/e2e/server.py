"""Run `resnet-serve serve` as a real process on a free loopback port."""

import os
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import loadtest.common.processes
from loadtest.common.processes import free_port, start_service

# The web page is off unless a test turns it on (UI_ON): importing Gradio adds 3 s to the
# start of every process that serves it.
LITE0_ENV = loadtest.common.processes.LITE0_ENV | {
    "RESNET_SERVE_THREADS": "2",
    "RESNET_SERVE_UI": "false",
}
UI_ON = {"RESNET_SERVE_UI": "true"}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)


def start_server(
    tmp_path: Path, env: dict[str, str], ready_timeout_s: float = 120, unset: Iterable[str] = ()
) -> Server:
    """The service with LITE0_ENV and `env`, less the variables named in `unset` (their
    defaults then apply)."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = os.environ | LITE0_ENV | env | {"RESNET_SERVE_DATA_DIR": str(tmp_path / "data")}
    full_env = {name: value for name, value in full_env.items() if name not in set(unset)}
    with log_path.open("wb") as log:
        try:
            process = start_service(
                full_env, port, log=log, log_level="info", ready_timeout_s=ready_timeout_s
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{log_path.read_text(errors='replace')}") from None
    return Server(process, f"http://127.0.0.1:{port}", log_path)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert values, f"{name} {labels} not in /metrics"
    return sum(values)

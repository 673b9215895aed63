"""`serve run deploy/ray/serve.yaml`, Ray's own command, starts a local Ray and serves the
application (here on a free loopback port instead of 8000, and Ctrl-C stops it all)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from loadtest.common.processes import LITE0_ENV, free_port
from tests.photos import encode, photo

pytestmark = pytest.mark.slow

SERVE_YAML = Path(__file__).parents[2] / "deploy/ray/serve.yaml"


def test_serve_run_of_the_config_file_serves_the_api(tmp_path: Path) -> None:
    config = yaml.safe_load(SERVE_YAML.read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = (
        os.environ
        | LITE0_ENV
        | {
            "RESNET_SERVE_DATA_DIR": str(tmp_path / "data"),
            "RESNET_SERVE_THREADS": "1",
            "RESNET_SERVE_UI": "false",
            "RAY_ADDRESS": "local",  # a new local Ray, never a cluster this machine may know
        }
    )
    serve = Path(sys.executable).parent / "serve"
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(serve), "run", str(config_path)],
        env=env,
        stdout=log,
        stderr=log,
        cwd=tmp_path,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        jpeg = encode(photo("coffee"))
        answer = httpx.post(f"{url}/v1/classify", files={"file": ("c.jpg", jpeg)}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tf_efficientnet_lite0"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: serve run shuts Serve and its Ray down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()

"""The locust scenarios fail a request on a wrong body, not only on a wrong status.

locust runs as a subprocess (importing it here would gevent-patch the test process) against
a stub HTTP server, so these tests need no model.
"""

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadtest.common.report import read_locust_failures, read_locust_stats

LOCUSTFILE = Path(__file__).parents[2] / "loadtest" / "locust" / "locustfile.py"


def stub_server(body: dict[str, object]) -> ThreadingHTTPServer:
    payload = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def serve() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def run_locust(server: ThreadingHTTPServer, prefix: Path) -> int:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", "2", "-r", "2", "-t", "3s", "--only-summary", "--csv", str(prefix)]
    command += ["--host", f"http://127.0.0.1:{server.server_address[1]}", "ClassifyUnique"]
    return subprocess.run(command, capture_output=True, timeout=60).returncode


def test_a_200_with_a_wrong_body_is_a_failure(
    serve: list[ThreadingHTTPServer], tmp_path: Path
) -> None:
    serve.append(stub_server({"predictions": []}))

    exit_code = run_locust(serve[0], tmp_path / "run")

    total, _ = read_locust_stats(tmp_path / "run")
    assert exit_code == 1
    assert total.requests > 0 and total.failures == total.requests
    assert any("0 predictions for top_k=5" in f for f in read_locust_failures(tmp_path / "run"))


def test_a_sane_body_passes(serve: list[ThreadingHTTPServer], tmp_path: Path) -> None:
    prediction = {"class_id": 967, "label": "espresso", "score": 0.9}
    serve.append(stub_server({"predictions": [prediction]}))

    exit_code = run_locust(serve[0], tmp_path / "run")

    total, _ = read_locust_stats(tmp_path / "run")
    assert exit_code == 0
    assert total.requests > 0 and total.failures == 0

"""loadtest.common.load drives several load processes over one window and merges what they saw."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.common.load import measure_load


class Counting(BaseHTTPRequestHandler):
    tags: set[bytes] = set()  # noqa: RUF012  (class-level: shared by the server's handlers)
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        # The unique-image comment segment: "resnet-serve load <tag> <counter>".
        marker = body.index(b"resnet-serve load ")
        with self.lock:
            self.tags.add(body[marker : body.index(b" ", marker + 18)])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_several_processes_share_the_window_and_stay_unique(server: str) -> None:
    Counting.tags.clear()
    result = measure_load(server, "/v1/classify", 6, seconds=1.5, warmup_s=0.2, processes=3)
    assert result.concurrency == 6 and set(result.statuses) == {"200"}
    assert result.ok_rps > 0 and result.p50_ms <= result.p99_ms
    assert len(Counting.tags) == 3  # each process tags its images: no repeats across them

"""The probe that decides whether the weights host is reachable goes the way the download
would: through HTTPS_PROXY / HTTP_PROXY, unless NO_PROXY exempts the host."""

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from service.model.weights import WeightsUnavailable, _probe


class _Proxy(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        _Proxy.seen.append(self.path)  # a proxy is asked for the absolute URL
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_probe_goes_through_the_proxy(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    _probe("http://hub.example/")  # reachable through the proxy; never resolved here
    assert _Proxy.seen[-1] == "http://hub.example/"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: direct, and nothing listens there
    with pytest.raises(WeightsUnavailable, match="unreachable"):
        _probe(f"http://127.0.0.1:{closed_port()}/")

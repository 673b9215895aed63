"""A Milvus Lite server (`python -m milvus_lite server`) on a free loopback port, owned by a
test: what a Milvus Standalone is to the service (an http:// URI), and one a test can kill
and start again on the same port and data."""

import socket
import subprocess
import sys
import time
from pathlib import Path

from loadtest.common.processes import free_port


class MilvusServer:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "milvus_lite", "server"),
                *("--data-dir", str(self._directory), "--port", str(self.port)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded wait for the port
            if self.process.poll() is not None:
                raise RuntimeError(f"milvus_lite server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Milvus Lite server did not start")

    def kill(self) -> None:
        """SIGKILL: what a crashed or lost Milvus looks like to its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

"""A lean keep-alive HTTP/1.1 client for load generation.

httpx costs about a millisecond of CPU per request; on a 2-core machine shared with the
server that client time shows up as server latency. This client sends prebuilt request
bytes and reads responses by Content-Length (what the service always sends).
"""

import asyncio
import uuid
from typing import NamedTuple
from urllib.parse import urlparse


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def multipart_body(
    files: dict[str, tuple[str, bytes] | list[tuple[str, bytes]]],
    fields: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """Content-Type and body of a multipart/form-data request: JPEG files (a list: the field
    repeated, as a batch route takes them) and text fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        parts.append(head.encode() + value.encode() + b"\r\n")
    repeated = [
        (name, file)
        for name, value in files.items()
        for file in (value if isinstance(value, list) else [value])
    ]
    for name, (filename, data) in repeated:
        disposition = f'form-data; name="{name}"; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        head += "Content-Type: image/jpeg\r\n\r\n"
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def multipart_request(
    host: str, path: str, field: str, filename: str, data: bytes | list[bytes]
) -> bytes:
    """A POST of one file, or of several in one repeated field (a list)."""
    files = [(filename, d) for d in data] if isinstance(data, list) else (filename, data)
    content_type, body = multipart_body({field: files})
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> Reply:
        """Status, headers and body; reconnects once if the server closed the idle connection."""
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None
            try:
                self._writer.write(request)
                head = await self._reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await self._reader.readexactly(int(headers["content-length"]))
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return Reply(status, headers, body)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self._reader = None

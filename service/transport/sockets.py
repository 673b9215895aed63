"""Where the worker processes listen: one directory of Unix sockets per service.

Every model version has its own model and index sockets, so a client of one version is the
same client as before (RemoteModel, RemoteIndex) pointed at that version's paths. Version
names are at most 63 characters; a socket path must fit in 107 bytes, so long names are
replaced by a digest.
"""

import hashlib
from pathlib import Path

_READABLE = 24  # names up to this long appear as they are


def _tag(version: str) -> str:
    if len(version) <= _READABLE:
        return version
    return hashlib.sha256(version.encode()).hexdigest()[:16]


def model_socket(sockets: Path, device: int, version: str) -> Path:
    """Where model worker `device` answers for `version`."""
    return sockets / f"model-{device}@{_tag(version)}.sock"


def index_socket(sockets: Path, version: str) -> Path:
    """Where the index worker answers for `version`'s index."""
    return sockets / f"index@{_tag(version)}.sock"


def index_host_socket(sockets: Path) -> Path:
    """Where the index worker takes requests to open and close a version's index."""
    return sockets / "index.sock"


def versions_socket(sockets: Path) -> Path:
    """Where the first model worker manages the model versions."""
    return sockets / "versions.sock"

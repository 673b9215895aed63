"""Imported by every Python process whose PYTHONPATH starts with this folder: the packages
named in WITHOUT_PACKAGES (comma-separated top-level names) are then not found, as on a
machine that does not have them (the offline GPU box has no OpenVINO, Gradio, grad-cam,
locust, psutil or TorchCodec). Child processes inherit the environment, so a service that a
benchmark starts is as bare as the benchmark."""

import os
import sys
from typing import Any

_ABSENT = frozenset(filter(None, os.environ.get("WITHOUT_PACKAGES", "").split(",")))


class _Hiding:
    """A meta path finder that finds nothing of the absent packages, else what it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".")[0] in _ABSENT:
            return None
        return self._inner.find_spec(name, path, target)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


if _ABSENT:
    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]

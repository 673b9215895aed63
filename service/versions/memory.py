"""Whether another version fits in memory beside the live one."""

import os

from service.errors import InsufficientMemory
from service.versions.serving import Serving


def parameter_bytes(serving: Serving) -> int:
    """The serving model's weights in memory, as its host reports them (0: not loaded)."""
    model = serving.pipeline.model
    return model.status().parameter_bytes if model.ready else 0


def available_memory_bytes() -> int:
    """Memory the kernel says new allocations can have (MemAvailable), without psutil (an
    optional package)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(live: Serving | None) -> None:
    """Refuse a version that would not fit: it needs about what the live one takes (its
    weights several times over: backend, explainer replicas, activations)."""
    need = 4 * parameter_bytes(live) if live is not None else 0
    available = available_memory_bytes()
    if need > available:
        raise InsufficientMemory(
            f"a new version needs about {need / 2**20:.0f} MiB; "
            f"{available / 2**20:.0f} MiB are available"
        )

"""Whether another version fits in memory beside the live one."""

from service.errors import InsufficientMemory
from service.resources import available_memory_bytes
from service.versions.serving import Serving


def parameter_bytes(serving: Serving) -> int:
    """The serving model's weights in memory, as its host reports them (0: not loaded)."""
    model = serving.pipeline.model
    return model.status().parameter_bytes if model.ready else 0


def check_memory(live: Serving | None) -> None:
    """Refuse a version that would not fit: it needs about what the live one takes (its
    weights several times over: backend, explainer replicas, activations)."""
    need = 4 * parameter_bytes(live) if live is not None else 0
    available = available_memory_bytes()  # MemAvailable, within the cgroup's limit
    if need > available:
        raise InsufficientMemory(
            f"a new version needs about {need / 2**20:.0f} MiB; "
            f"{available / 2**20:.0f} MiB are available"
        )

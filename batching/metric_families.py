"""One Prometheus metric object per name and registry, however many model hosts report on it.

A process may host several model versions at once (the live one and one being prepared);
each reports on the same metrics, told apart by a `version` label. Two objects of one name on
a registry would collide (the registry refuses the second, and in multi-process mode both
would write one slot of the process's file), so the first caller creates a metric and later
ones get the same object.
"""

import threading
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_created: "WeakKeyDictionary[CollectorRegistry, dict[str, MetricWrapperBase]]" = WeakKeyDictionary()
_lock = threading.Lock()  # hosts load on threads of their own


def family(
    registry: CollectorRegistry,
    kind: type[M],
    name: str,
    documentation: str,
    labelnames: list[str],
    **options: Any,
) -> M:
    """The metric `name` on `registry`: created with these arguments by its first caller."""
    with _lock:
        on_registry = _created.setdefault(registry, {})
        found = on_registry.get(name)
        if found is None:
            found = kind(name, documentation, labelnames, registry=registry, **options)
            on_registry[name] = found
    if not isinstance(found, kind):
        raise TypeError(f"metric {name} is a {type(found).__name__}, not a {kind.__name__}")
    return found

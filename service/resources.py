"""The CPU and memory this process may use, as a container sees them.

CPU affinity (taskset, a container's CPU set) is not the whole story: `docker run --cpus=2`
or a Kubernetes CPU limit set a CFS quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over
`cpu.cfs_period_us`) while every core of the node stays in the affinity mask; threads sized
for 64 cores then thrash against a 2-core quota. The memory limit (`memory.max`, v1
`memory.limit_in_bytes`) bounds what the cache may take and whether a new model version
fits.
"""

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED_V1 = 1 << 60  # v1 reports "no limit" as a page-rounded LONG_MAX
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024  # the in-process result cache, for the whole service
_CACHE_SHARE_OF_LIMIT = 8  # under a memory limit the cache takes at most an eighth of it


@dataclass(frozen=True)
class Resources:
    cores: int  # the smaller of the affinity mask and the CPU quota, rounded up
    affinity_cores: int
    cpu_quota: float | None  # cores' worth of CPU time the cgroup allows (None: no quota)
    memory_limit_bytes: int | None  # the cgroup's memory limit (None: none)

    def describe(self) -> dict[str, object]:
        return {
            "cores": self.cores,
            "affinity_cores": self.affinity_cores,
            "cpu_quota": self.cpu_quota,
            "memory_limit_bytes": self.memory_limit_bytes,
        }


def detect(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Resources:
    """What this process may use; `root` and `proc_cgroup` are parameters for tests."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count() or 1
    quota = cpu_quota(root, proc_cgroup)
    cores = affinity if quota is None else max(1, min(affinity, math.ceil(quota)))
    return Resources(cores, affinity, quota, memory_limit(root, proc_cgroup))


def cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    v2 = _read(_v2_dir(root, proc_cgroup), "cpu.max")
    if v2 is not None:
        limit, _, period = v2.partition(" ")
        return None if limit == "max" else int(limit) / int(period or 100_000)
    v1 = _v1_dir(root, proc_cgroup, "cpu")
    quota_us, period_us = _read(v1, "cpu.cfs_quota_us"), _read(v1, "cpu.cfs_period_us")
    if quota_us is None or period_us is None or int(quota_us) <= 0:
        return None
    return int(quota_us) / int(period_us)


def cache_budget(configured: int | None, memory_limit_bytes: int | None) -> int:
    """The in-process cache's bytes for the whole service: as configured, else the default
    bounded by an eighth of the memory limit (HTTP workers split it between them)."""
    if configured is not None:
        return configured
    if memory_limit_bytes is None:
        return DEFAULT_CACHE_BYTES
    return min(DEFAULT_CACHE_BYTES, memory_limit_bytes // _CACHE_SHARE_OF_LIMIT)


def available_memory_bytes(
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    meminfo: Path = Path("/proc/meminfo"),
) -> int:
    """Memory new allocations can have: what the kernel says is available (MemAvailable),
    and no more than the cgroup's limit less its usage."""
    available = _meminfo_available(meminfo)
    limit = memory_limit(root, proc_cgroup)
    if limit is None:
        return available
    v2 = _read(_v2_dir(root, proc_cgroup), "memory.current")
    used = (
        v2
        if v2 is not None
        else _read(_v1_dir(root, proc_cgroup, "memory"), "memory.usage_in_bytes")
    )
    return min(available, max(0, limit - int(used or 0)))


def _meminfo_available(meminfo: Path) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_limit(root: Path, proc_cgroup: Path) -> int | None:
    v2 = _read(_v2_dir(root, proc_cgroup), "memory.max")
    if v2 is not None:
        return None if v2 == "max" else int(v2)
    v1 = _read(_v1_dir(root, proc_cgroup, "memory"), "memory.limit_in_bytes")
    if v1 is None or int(v1) >= _UNLIMITED_V1:
        return None
    return int(v1)


def _read(directory: Path | None, name: str) -> str | None:
    if directory is None:
        return None
    try:
        return (directory / name).read_text().strip()
    except (OSError, ValueError):
        return None


def _memberships(proc_cgroup: Path) -> list[tuple[str, str]]:
    """(controllers, path) of each line of /proc/self/cgroup: "0::/path" is v2."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    return [(parts[1], parts[2]) for line in lines if len(parts := line.split(":", 2)) == 3]


def _v2_dir(root: Path, proc_cgroup: Path) -> Path | None:
    for controllers, path in _memberships(proc_cgroup):
        if controllers == "":
            nested = root / path.lstrip("/")
            # Inside a container the namespace shows its own cgroup at the root.
            return nested if nested.is_dir() else root
    return None


def _v1_dir(root: Path, proc_cgroup: Path, controller: str) -> Path | None:
    for controllers, path in _memberships(proc_cgroup):
        if controller in controllers.split(","):
            for mount in (root / controllers, root / controller):
                nested = mount / path.lstrip("/")
                if nested.is_dir():
                    return nested
                if mount.is_dir():
                    return mount
    return None

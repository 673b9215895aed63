"""CPU and memory as a container sees them: cgroup v2 and v1 files read from a fixture tree."""

from pathlib import Path

from service import resources


def cgroup_v2(tmp_path: Path, cpu_max: str, memory_max: str, current: str = "0") -> Path:
    group = tmp_path / "fs" / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (group / "cpu.max").write_text(cpu_max + "\n")
    (group / "memory.max").write_text(memory_max + "\n")
    (group / "memory.current").write_text(current + "\n")
    (tmp_path / "cgroup").write_text("0::/kubepods/pod1\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota: str, period: str, limit: str) -> Path:
    cpu = tmp_path / "fs" / "cpu,cpuacct" / "docker" / "abc"
    memory = tmp_path / "fs" / "memory" / "docker" / "abc"
    cpu.mkdir(parents=True)
    memory.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text(quota + "\n")
    (cpu / "cpu.cfs_period_us").write_text(period + "\n")
    (memory / "memory.limit_in_bytes").write_text(limit + "\n")
    (memory / "memory.usage_in_bytes").write_text("1073741824\n")
    (tmp_path / "cgroup").write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    return tmp_path


def detect(tree: Path) -> resources.Resources:
    return resources.detect(tree / "fs", tree / "cgroup")


def test_a_v2_quota_and_memory_limit_are_read(tmp_path: Path) -> None:
    found = detect(cgroup_v2(tmp_path, "150000 100000", str(2 << 30)))
    assert found.cpu_quota == 1.5 and found.memory_limit_bytes == 2 << 30
    assert found.cores == min(found.affinity_cores, 2)  # 1.5 cores of time: two threads


def test_v2_without_limits(tmp_path: Path) -> None:
    found = detect(cgroup_v2(tmp_path, "max 100000", "max"))
    assert found.cpu_quota is None and found.memory_limit_bytes is None
    assert found.cores == found.affinity_cores


def test_a_v1_quota_and_memory_limit_are_read(tmp_path: Path) -> None:
    found = detect(cgroup_v1(tmp_path, "100000", "100000", str(512 << 20)))
    assert found.cpu_quota == 1.0 and found.cores == 1
    assert found.memory_limit_bytes == 512 << 20


def test_v1_without_limits(tmp_path: Path) -> None:
    found = detect(cgroup_v1(tmp_path, "-1", "100000", "9223372036854771712"))
    assert found.cpu_quota is None and found.memory_limit_bytes is None


def test_no_cgroup_files_mean_no_limits(tmp_path: Path) -> None:
    found = resources.detect(tmp_path / "none", tmp_path / "missing")
    assert found.cpu_quota is None and found.memory_limit_bytes is None and found.cores >= 1


def test_the_cache_budget_and_available_memory_follow_the_limit(tmp_path: Path) -> None:
    assert resources.cache_budget(None, None) == resources.DEFAULT_CACHE_BYTES
    assert resources.cache_budget(None, 1 << 30) == (1 << 30) // 8  # 128 MiB under 1 GiB
    assert resources.cache_budget(0, 1 << 30) == 0  # configured: as set
    tree = cgroup_v2(tmp_path, "max 100000", str(4 << 30), current=str(3 << 30))
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100000000 kB\nMemAvailable: 50000000 kB\n")
    available = resources.available_memory_bytes(tree / "fs", tree / "cgroup", meminfo)
    assert available == 1 << 30  # the limit less the usage, not the host's 47 GiB

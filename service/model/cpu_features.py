"""What this CPU can do, read from /proc/cpuinfo (no library needed: OpenVINO is optional)."""

from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()  # unknown: every check below answers the safe "no"
    return frozenset(text.split())


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_int8_dot_product() -> bool:
    """VNNI or AMX: int8 products accumulate in 32 bits. Without them (AVX2 only), the u8 x s8
    pair sums saturate at 16 bits unless weights are kept to 7 bits (NNCF's overflow fix)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})

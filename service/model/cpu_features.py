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


# The features the backends' kernels are chosen by (a decision made without them is not
# this machine's decision).
_DECISIVE_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@cache
def cpu_identity() -> str:
    """The CPU's model name and the features that decide a backend's speed, e.g. 'AMD EPYC
    9R14 96-Core Processor (avx2 avx512f avx512_vnni avx512_bf16)'; '' where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    names = [
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")
    ]
    flags = cpu_flags()
    present = " ".join(flag for flag in _DECISIVE_FLAGS if flag in flags)
    return f"{names[0] if names else 'unknown CPU'} ({present})"

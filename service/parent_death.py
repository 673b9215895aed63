"""Linux's parent-death signal: for a process that must not outlive the one that started it."""

import ctypes
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux
    return prctl


# Looked up once, at import: a child between fork and exec (subprocess's preexec_fn) then
# makes a plain call, with no dlopen whose lock another thread may have held at the fork.
_PRCTL = _libc_prctl()


def signal_on_parent_death(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent (the thread that started
    it) exits. False where that is not available (not Linux)."""
    if _PRCTL is None:
        return False
    _PRCTL(_PR_SET_PDEATHSIG, sig)
    return True

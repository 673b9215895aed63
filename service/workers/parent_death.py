"""Linux's parent-death signal: for a process that must not outlive the one that started it."""

import ctypes

_PR_SET_PDEATHSIG = 1


def signal_on_parent_death(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent (the thread that started
    it) exits. False where that is not available (not Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        return False
    return True

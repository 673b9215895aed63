"""Directories named after the process that made them (resnet-serve-<pid>...).

A process killed with SIGKILL cannot remove what it made: slot files in /dev/shm hold RAM
until a reboot, and a new process given a dead one's pid could not make its own. The pid in
the name tells a dead process's leftovers from a live one's, so the next supervisor to start
removes them (`remove_leftovers`).
"""

import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "resnet-serve-"


def own_name() -> str:
    """This process's name for a directory of its own: resnet-serve-<pid>."""
    return f"{PREFIX}{os.getpid()}"


def temporary_dir(purpose: str = "") -> Path:
    """A new directory in the temp directory, named for this process (and `purpose`)."""
    return Path(tempfile.mkdtemp(prefix=f"{own_name()}-{purpose}{'-' if purpose else ''}"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_leftovers(directory: Path) -> None:
    """Remove every such directory in `directory` whose pid is this process or no live one.
    (Assumes the directory is not shared with another pid namespace, as a container's own /tmp
    and /dev/shm are not.)"""
    for path in directory.glob(f"{PREFIX}*"):
        pid, _, _ = path.name.removeprefix(PREFIX).partition("-")
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)

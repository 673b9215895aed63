"""The background backend search, in a process of its own, niced as a whole.

A search beside the serving model used to run on a nice thread of the serving process. Its
libraries' own thread pools (OpenVINO's, NNCF's, a compile's workers) did not all inherit
that thread's nice value, and its Python held the serving process's GIL (gate checks,
calibration, quantization), so serving missed its latency target while it ran. A process
started at the lowest priority passes that priority to every thread and process it starts,
holds no lock of the serving process, and can be ended if a stop cannot wait for it.

The child loads the model itself, searches in the gaps of serving (ServingActivity, shared
with it), writes the decision and the converted models to the model cache, and sends its
progress and its decisions back over a pipe: a provisional one when it could only measure
under load, then the final one. The serving process builds the winner from the cache.
"""

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.context import SpawnProcess
from typing import Any

from service.model.backend_search import SearchProgress, search_backends
from service.model.selection import Choice
from service.model.serving_gaps import SearchCancelled, ServingActivity, ServingGaps
from service.settings import Settings

log = logging.getLogger(__name__)

SEARCH_NICENESS = 19  # as nice as a process can be: serving comes first
# A spawned process: the search may load CUDA, and no lock of the serving process's threads
# is copied into it half-held.
CONTEXT = multiprocessing.get_context("spawn")


class SearchFailed(RuntimeError):
    """The search process failed (its error), or died without a word."""


@dataclass(frozen=True)
class Decision:
    choice: Choice
    final: bool  # False: measured under load, served meanwhile, measured again later


class SearchProcess:
    """One background search: start() it, iterate its decisions, kill() it if it must end."""

    def __init__(self, settings: Settings, activity: ServingActivity) -> None:
        self._settings = settings
        self._activity = activity
        self._stop: Any = CONTEXT.Event()
        self._process: SpawnProcess | None = None
        self._receiver: Connection | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        receiver, sender = CONTEXT.Pipe(duplex=False)
        self._process = CONTEXT.Process(
            target=_search_main,
            args=(self._settings, self._activity, self._stop, sender),
            name="backend-search",
            daemon=True,  # ended with the service, whatever it is doing
        )
        self._process.start()
        sender.close()  # the child holds the only writing end: its exit is our EOF
        self._receiver = receiver

    def decisions(self, progress: SearchProgress) -> Iterator[Decision]:
        """The search's decisions as they come (its progress copied into `progress`), until
        it ends. Raises SearchCancelled when it was stopped, SearchFailed when it failed."""
        assert self._process is not None and self._receiver is not None, "start() first"
        receiver, process = self._receiver, self._process
        while True:
            wait_for([receiver, process.sentinel])
            try:
                kind, payload = receiver.recv()
            except EOFError:
                process.join()
                if self._stop is not None and self._stop.is_set():
                    raise SearchCancelled from None  # killed by a stop it could not wait for
                raise SearchFailed(
                    f"the search process ended without a decision (exit {process.exitcode})"
                ) from None
            if kind == "progress":
                progress.adopt(payload)
            elif kind in ("provisional", "final"):
                yield Decision(payload, final=kind == "final")
                if kind == "final":
                    process.join()
                    return
            elif kind == "cancelled":
                process.join()
                raise SearchCancelled
            else:
                process.join()
                raise SearchFailed(payload)

    def stop(self) -> None:
        """Ask the search to stop at its next step."""
        if self._stop is not None:
            self._stop.set()

    def close(self) -> None:
        """Once it has ended: let go of the process and the primitives shared with it."""
        self._process = self._receiver = self._stop = None

    def kill(self) -> None:
        """End it now (a conversion that cannot reach its next step in time)."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()


class _ForwardedProgress(SearchProgress):
    """The child's progress, sent to the serving process after every step."""

    def __init__(self, send: Callable[[tuple[str, Any]], None]) -> None:
        super().__init__()
        self._send = send

    def begin(self, options: list[Any]) -> None:
        super().begin(options)
        self._send(("progress", self.snapshot()))

    def candidate_done(self, candidate: Any, summary: str) -> None:
        super().candidate_done(candidate, summary)
        self._send(("progress", self.snapshot()))


def _search_main(
    settings: Settings, activity: ServingActivity, stop: Any, sender: Connection
) -> None:
    """The search process: lowest priority first, so every thread it starts inherits it."""
    from service.logs import configure_logging
    from service.model.runtime import load_parts
    from service.parent_death import signal_on_parent_death

    signal_on_parent_death(signal.SIGKILL)  # never outlive the service
    parent = multiprocessing.parent_process()
    if parent is not None and not parent.is_alive():
        return  # it died before the signal was set up
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the service decides
    os.setpriority(os.PRIO_PROCESS, 0, SEARCH_NICENESS)
    configure_logging(settings.log_level, settings.log_format, "backend-search")
    try:
        parts = load_parts(settings)
        choice, _ = search_backends(
            parts,
            settings,
            _ForwardedProgress(sender.send),
            ServingGaps(activity, stop.is_set),
            provisional=lambda early: sender.send(("provisional", early)),
        )
        sender.send(("final", choice))
    except SearchCancelled:
        sender.send(("cancelled", None))
    except Exception as exc:  # reported to the serving process, which keeps its backend
        log.exception("backend search failed")
        sender.send(("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        sender.close()

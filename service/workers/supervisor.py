"""What `resnet-serve serve` runs when RESNET_SERVE_WORKERS > 1: the process topology.

One model worker per device, one index worker, N HTTP workers sharing one listening socket.
A worker that dies is started again (with backoff if it keeps dying); while the model worker
is down the HTTP workers answer 503 and /readyz is red. A worker that exits with
EXIT_CONFIG_ERROR (weights missing, index of another model) stops the whole service, since a
restart would fail the same way. SIGTERM stops the HTTP workers first, so in-flight requests
finish against a live model, then the model workers, then the index worker.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from service import resources
from service.process_dirs import own_name, remove_leftovers, temporary_dir
from service.settings import Settings, available_cores
from service.transport.slots import shared_memory_dir
from service.workers.metrics import MULTIPROC_ENV
from service.workers.process import EXIT_CONFIG_ERROR

log = logging.getLogger(__name__)

_STABLE_S = 30.0  # a worker that ran this long before dying is restarted without delay
_MAX_BACKOFF_S = 10.0


@dataclass
class WorkerSpec:
    name: str
    role: str  # model | index | http
    args: list[str]
    pass_fds: tuple[int, ...] = ()
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    restarts: int = 0


def _flags(settings: Settings, **values: object) -> list[str]:
    """Command-line flags of a worker: its settings as JSON, then --name-with-dashes value."""
    flags = ["--settings", settings.model_dump_json()]
    for name, value in values.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def model_devices(settings: Settings) -> list[str]:
    """One model worker per device: every visible GPU for `auto`, else the one configured."""
    if settings.device != "auto":
        return [settings.device]
    import torch  # only here: the supervisor itself needs no model

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


class Supervisor:
    def __init__(self, settings: Settings, http_workers: int) -> None:
        self.settings = settings
        self.http_workers = http_workers
        self._stopping = asyncio.Event()
        self._exit_code = 0
        self._shm = shared_memory_dir() / own_name()  # its slots
        self.workers: list[WorkerSpec] = []

    def plan(self, listen_fd: int, sockets: Path) -> list[WorkerSpec]:
        """The workers to run; their Unix sockets go in `sockets` (service.transport.sockets)."""
        settings = self.settings
        devices = model_devices(settings)
        workers = [
            WorkerSpec(
                f"model-{i}",
                "model",
                _flags(
                    settings=settings.model_copy(update={"device": device}),
                    sockets=sockets,
                    device_number=i,
                ),
            )
            for i, device in enumerate(devices)
        ]
        workers.append(WorkerSpec("index", "index", _flags(settings=settings, sockets=sockets)))
        # The cores are shared by the workers: a full pool each would oversubscribe them; the
        # in-process cache is one budget for the service, each worker holding its share.
        limit = resources.detect().memory_limit_bytes
        cache = resources.cache_budget(settings.cache_memory_bytes, limit) // self.http_workers
        shared: dict[str, object] = {"cache_memory_bytes": cache}
        if "decode_threads" not in settings.model_fields_set:
            shared["decode_threads"] = max(1, available_cores() // self.http_workers)
        http_settings = settings.model_copy(update=shared)
        for i in range(self.http_workers):
            name = f"http-{i}"
            flags = _flags(
                settings=http_settings,
                sockets=sockets,
                model_workers=len(devices),
                listen_fd=listen_fd,
                slots=self._shm / name,
            )
            workers.append(WorkerSpec(name, "http", flags, pass_fds=(listen_fd,)))
        return workers

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT or a configuration error; returns the exit status."""
        remove_leftovers(self._shm.parent)
        remove_leftovers(Path(tempfile.gettempdir()))
        runtime = temporary_dir()  # sockets and metrics
        metrics = runtime / "metrics"
        metrics.mkdir()
        self._shm.mkdir(mode=0o700)
        listener = socket.create_server(
            (self.settings.host, self.settings.port), backlog=2048, reuse_port=False
        )
        listener.set_inheritable(True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        self.workers = self.plan(listener.fileno(), runtime)
        log.info(
            "supervisor: %s on http://%s:%d",
            ", ".join(w.name for w in self.workers),
            self.settings.host,
            self.settings.port,
        )
        keepers = [asyncio.create_task(self._keep_running(w, metrics)) for w in self.workers]
        try:
            await self._stopping.wait()
            listener.close()  # the HTTP workers hold their own copies until they drain
            await self._stop_role("http", timeout_s=self.settings.request_timeout_s + 15)
            # The model workers before the index worker: the first one's model versions
            # write to it (re-embedding, following) until they are closed.
            await self._stop_role("model", timeout_s=self.settings.request_timeout_s + 15)
            await self._stop_role("index", timeout_s=60)
            await asyncio.gather(*keepers)
        finally:
            for keeper in keepers:
                keeper.cancel()
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.kill()
            shutil.rmtree(runtime, ignore_errors=True)
            shutil.rmtree(self._shm, ignore_errors=True)
        return self._exit_code

    async def _keep_running(self, worker: WorkerSpec, metrics: Path) -> None:
        backoff = 0.5
        env = os.environ | {MULTIPROC_ENV: str(metrics)}
        while not self._stopping.is_set():
            started = time.monotonic()
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.workers",
                worker.role,
                "--name",
                worker.name,
                *worker.args,
                env=env,
                pass_fds=worker.pass_fds,
                # Out of the terminal's process group: Ctrl-C reaches the supervisor alone,
                # which stops the workers in order (die_with_parent covers a killed supervisor).
                start_new_session=True,
            )
            returncode = await worker.process.wait()
            self._cleanup_after(worker, worker.process.pid, metrics)
            if self._stopping.is_set():
                return
            if returncode == EXIT_CONFIG_ERROR:
                log.error("%s cannot start with this configuration; stopping", worker.name)
                self._exit_code = EXIT_CONFIG_ERROR
                self._stopping.set()
                return
            worker.restarts += 1
            backoff = 0.5 if time.monotonic() - started > _STABLE_S else min(2 * backoff, 10)
            log.warning(
                "%s (pid %d) exited with %s; restarting in %.1f s",
                worker.name,
                worker.process.pid,
                returncode,
                backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)

    def _cleanup_after(self, worker: WorkerSpec, pid: int, metrics: Path) -> None:
        """What a dead worker leaves: its shared-memory slots and its live gauges."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(metrics))  # type: ignore[no-untyped-call]
        for leftover in self._shm.glob(f"{worker.name}-*"):
            leftover.unlink(missing_ok=True)

    async def _stop_role(self, role: str, timeout_s: float) -> None:
        running = [
            w.process
            for w in self.workers
            if w.role == role and w.process is not None and w.process.returncode is None
        ]
        for process in running:
            process.terminate()
        if not running:
            return
        _, late = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in running], timeout=timeout_s
        )
        if late:
            log.warning("%d %s worker(s) still running after %.0f s", len(late), role, timeout_s)
            for process in running:
                if process.returncode is None:
                    process.kill()


def default_workers() -> int:
    """1 without a GPU: on CPU the model is the bottleneck and one process feeds it. With a
    GPU, one HTTP worker per core, leaving two for the model and index workers."""
    import torch

    if not torch.cuda.is_available():
        return 1
    return max(2, min(available_cores() - 2, 16))


def serve_with_workers(settings: Settings, http_workers: int) -> int:
    return asyncio.run(Supervisor(settings, http_workers).run())

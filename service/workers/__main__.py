"""python -m service.workers model|index|http ...: one worker process, started by the supervisor."""

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from index.collection import IndexInUse
from index.store import ModelMismatch
from service import tracing
from service.logs import configure_logging
from service.model.load_error import ModelLoadError
from service.on_disk import BrokenFile
from service.parent_death import signal_on_parent_death
from service.settings import Settings
from service.workers.process import EXIT_CONFIG_ERROR

log = logging.getLogger("service.workers")


def die_with_parent() -> None:
    """A worker must not outlive its supervisor (kill -9 of the supervisor included)."""
    parent = os.getppid()
    if not signal_on_parent_death(signal.SIGKILL):
        return  # not Linux: the supervisor's own shutdown still stops its workers
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_worker(main: Coroutine[Any, Any, None]) -> None:
    """Run a model or index worker on the event loop uvicorn picks for the HTTP workers
    (uvloop where installed): the model worker's hand-offs, a few per image, then cost
    less CPU than on asyncio's own loop."""
    from uvicorn.loops.auto import auto_loop_factory

    with asyncio.Runner(loop_factory=auto_loop_factory()) as runner:
        runner.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service.workers")
    parser.add_argument("role", choices=("model", "index", "http"))
    parser.add_argument("--name", required=True)
    parser.add_argument("--settings", required=True, help="Settings as JSON")
    parser.add_argument("--sockets", type=Path, required=True, help="the workers' sockets")
    parser.add_argument("--device-number", type=int, default=0, help="a model worker's")
    parser.add_argument("--model-workers", type=int, default=1, help="how many there are")
    parser.add_argument("--listen-fd", type=int, help="the HTTP listening socket")
    parser.add_argument("--slots", help="path prefix of this HTTP worker's pixel slots")
    args = parser.parse_args()
    die_with_parent()
    settings = Settings.model_validate_json(args.settings)
    configure_logging(settings.log_level, settings.log_format, args.name)
    if args.role != "http":  # an HTTP worker's app configures it
        tracing.configure(f"{args.role}-worker")
    try:
        if args.role == "model":
            from service.workers.model_worker import serve_model

            run_worker(serve_model(settings, args.sockets, args.device_number))
        elif args.role == "index":
            from service.workers.index_worker import serve_index

            run_worker(serve_index(settings, args.sockets))
        else:
            from service.workers.http_worker import serve_http

            slots = f"{args.slots}-{os.getpid()}"
            serve_http(settings, args.listen_fd, args.sockets, args.model_workers, slots)
    except (ModelLoadError, ModelMismatch, IndexInUse, BrokenFile) as exc:
        log.error("%s", exc)
        sys.exit(EXIT_CONFIG_ERROR)
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()

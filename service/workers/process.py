"""What every worker process shares: how it stops, and how it says start-up failed."""

import asyncio
import logging
import signal

log = logging.getLogger(__name__)

# A worker exits with this when its configuration cannot work (weights missing, index of
# another model): restarting would fail the same way, so the supervisor stops the service.
EXIT_CONFIG_ERROR = 3


async def run_until_stopped(name: str) -> None:
    """Wait for SIGTERM or SIGINT (the supervisor's stop, or Ctrl-C in the terminal)."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    log.info("%s ready", name)
    await stopped.wait()

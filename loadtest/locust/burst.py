"""A bursty arrival shape for locust: a steady base load with periodic spikes.

    locust -f loadtest/locust/locustfile.py,loadtest/locust/burst.py --headless Mixed \
        --burst-base 2 --burst-peak 32 --burst-every 30 --burst-length 10 --burst-cycles 3

Each cycle runs `base` users for `every - length` seconds, then `peak` users for `length`
seconds (spawned at once: a burst, not a ramp). The run ends after `cycles` cycles.
"""

from typing import Any

from locust import LoadTestShape, events
from locust.argument_parser import LocustArgumentParser


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument("--burst-base", type=int, default=2, help="users between bursts")
    parser.add_argument("--burst-peak", type=int, default=32, help="users during a burst")
    parser.add_argument("--burst-every", type=float, default=30, help="cycle length, seconds")
    parser.add_argument("--burst-length", type=float, default=10, help="burst length, seconds")
    parser.add_argument("--burst-cycles", type=int, default=3, help="cycles before stopping")


class Burst(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        options: Any = self.runner.environment.parsed_options if self.runner else None
        if options is None:
            return None
        elapsed: float = self.get_run_time()
        if elapsed >= options.burst_every * options.burst_cycles:
            return None
        in_burst = elapsed % options.burst_every >= options.burst_every - options.burst_length
        users = options.burst_peak if in_burst else options.burst_base
        return users, float(max(options.burst_peak, 1))

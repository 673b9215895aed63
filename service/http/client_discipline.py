"""What the door remembers of each client: when a connection was told to come back
(Retry-After), and how many requests for the model each client address has in flight.

A client that comes back before its Retry-After is held for the rest of that time, then
refused: the refusal costs the server a timer (no worker, no thread, no decoding) and costs
the client the wait it skipped, so a retry loop that ignores Retry-After runs at the pace of
one that honours it. A polite client is never held: its refusals stay immediate. Retry storms
turn overloads into outages because every refusal invites an immediate retry; this takes
the invitation away.

For Retry-After a client is its connection (peer address and port): the service's one API
key is shared by every client, so it tells none apart, and behind a proxy the address alone
would make every client one. A client that reconnects to escape pays a connection set-up
each time. The memory is bounded (the least recently refused are forgotten first), and per
HTTP worker process: a connection lives on one worker.

For the fair share a client is its address (an HTTP/1.1 connection has one request in flight
at a time): behind a proxy, run uvicorn with `--forwarded-allow-ips` set to the proxy so the
address is the client's from X-Forwarded-For.
"""

import time
from collections import Counter, OrderedDict

from starlette.types import Scope

_REMEMBERED = 100_000  # clients whose Retry-After is kept at once
LONGEST_HOLD_S = 10.0  # a held refusal never keeps a connection longer


def connection_of(scope: Scope) -> str:
    host, port = scope.get("client") or ("?", 0)
    return f"{host}:{port}"


def address_of(scope: Scope) -> str:
    host, _ = scope.get("client") or ("?", 0)
    return str(host)


class RetryBook:
    """When each recently refused client may come back."""

    def __init__(self, remembered: int = _REMEMBERED) -> None:
        self._not_before: OrderedDict[str, float] = OrderedDict()
        self._remembered = remembered

    def refused(self, client: str, retry_after_s: float) -> None:
        self._not_before[client] = time.monotonic() + retry_after_s
        self._not_before.move_to_end(client)
        while len(self._not_before) > self._remembered:
            self._not_before.popitem(last=False)

    def early_by(self, client: str) -> float:
        """How long before its Retry-After this client came back (0: it did not)."""
        not_before = self._not_before.get(client)
        if not_before is None:
            return 0.0
        early = not_before - time.monotonic()
        if early <= 0:
            del self._not_before[client]
            return 0.0
        return early


class InFlight:
    """Each client address's requests for the model in flight in this process."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, client: str) -> int:
        return self._counts[client]

    def enter(self, client: str) -> None:
        self._counts[client] += 1

    def leave(self, client: str) -> None:
        self._counts[client] -= 1
        if self._counts[client] <= 0:
            del self._counts[client]

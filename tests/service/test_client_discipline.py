"""The door's treatment of clients and classes (service.http.admission), on a small app with
a stand-in model queue: a client that ignores Retry-After is held while a polite one is
not, a client over its share is refused while another is served, and a request can lower
its class but never raise it."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from batching import Priority, QueueFull
from service.admission import OnTheWay, Ticket
from service.errors import ServiceError, error_response
from service.http.admission import BULK_WORK, USES_MODEL, AdmitAtTheDoor, model_routes


class Queue:
    """A stand-in for a pipeline's door: refuses while `refusing`, records the classes."""

    def __init__(self) -> None:
        self.refusing = False
        self.classes: list[Priority] = []
        self.release = asyncio.Event()
        self.release.set()
        self._admitted = asyncio.Event()

    def admit(self, priority: Priority = Priority.INTERACTIVE) -> Ticket:
        if self.refusing:
            raise QueueFull(64, 0.5)
        self.classes.append(priority)
        self._admitted.set()
        return Ticket(OnTheWay())

    async def admitted(self, count: int) -> None:
        """Until `count` requests have been admitted."""
        while len(self.classes) < count:
            self._admitted.clear()
            await self._admitted.wait()


def make_app(queue: Queue, client_max_in_flight: int = 0) -> FastAPI:
    app = FastAPI()

    @app.post("/classify", openapi_extra=USES_MODEL)
    async def classify() -> dict[str, str]:
        await queue.release.wait()
        return {"ok": "yes"}

    @app.post("/classify/batch", openapi_extra=USES_MODEL | BULK_WORK)
    async def batch() -> dict[str, str]:
        return {"ok": "yes"}

    @app.exception_handler(ServiceError)
    async def service_error(_: Any, exc: ServiceError) -> Any:
        return error_response(exc)

    app.state.pipeline = queue
    app.add_middleware(
        AdmitAtTheDoor,
        routes=model_routes(app.routes),
        client_max_in_flight=client_max_in_flight,
    )
    return app


Clients = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[FastAPI], Clients]]:
    """Clients of an app, each its own connection (peer port)."""
    made: list[httpx.AsyncClient] = []

    def for_app(app: FastAPI) -> Clients:
        def client(port: int, host: str = "127.0.0.1") -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(host, port))
            made.append(httpx.AsyncClient(transport=transport, base_url="http://door"))
            return made[-1]

        return client

    yield for_app
    for client in made:
        await client.aclose()


async def test_a_client_back_before_retry_after_is_held_then_refused_a_polite_one_is_not(
    clients: Callable[[FastAPI], Clients],
) -> None:
    queue = Queue()
    client = clients(make_app(queue))
    rude, polite = client(1001), client(1002)
    queue.refusing = True
    first = await rude.post("/classify")
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    # Straight back: held for the rest of its Retry-After, on a timer, then refused.
    started = time.monotonic()
    held = asyncio.create_task(rude.post("/classify"))
    # Meanwhile another client is answered at once (the held one occupies nothing).
    other = await polite.post("/classify")
    assert other.status_code == 429 and "held" not in other.text
    assert not held.done()
    refused = await held
    assert time.monotonic() - started >= 0.9  # a timer's lower bound, not a speed guess
    assert refused.status_code == 429 and "honour Retry-After" in refused.text
    # Once it honours Retry-After, it is admitted like anyone else.
    queue.refusing = False
    await asyncio.sleep(float(refused.headers["retry-after"]))
    assert (await rude.post("/classify")).status_code == 200


async def test_a_client_over_its_share_is_refused_while_another_is_served(
    clients: Callable[[FastAPI], Clients],
) -> None:
    queue = Queue()
    client = clients(make_app(queue, client_max_in_flight=2))
    greedy = [client(port) for port in (2001, 2002, 2003)]  # one address, three connections
    other = client(2001, host="127.0.0.2")
    queue.release.clear()
    in_flight = [asyncio.create_task(connection.post("/classify")) for connection in greedy[:2]]
    await queue.admitted(2)  # both admitted and waiting in the route
    over = await greedy[2].post("/classify")
    assert over.status_code == 429 and "CLIENT_MAX_IN_FLIGHT=2" in over.text
    served = asyncio.create_task(other.post("/classify"))
    await queue.admitted(3)
    queue.release.set()
    assert [r.status_code for r in await asyncio.gather(*in_flight, served)] == [200, 200, 200]


async def test_a_request_may_lower_its_class_but_never_raise_it(
    clients: Callable[[FastAPI], Clients],
) -> None:
    queue = Queue()
    http = clients(make_app(queue))(3001)
    plain = await http.post("/classify")
    lowered = await http.post("/classify", headers={"x-priority": "bulk"})
    by_parameter = await http.post("/classify?priority=bulk")
    raised = await http.post("/classify/batch", headers={"x-priority": "interactive"})
    assert queue.classes == [Priority.INTERACTIVE, Priority.BULK, Priority.BULK, Priority.BULK]
    assert [r.headers["x-priority"] for r in (plain, lowered, by_parameter, raised)] == [
        "interactive",
        "bulk",
        "bulk",
        "bulk",
    ]
    unknown = await http.post("/classify", headers={"x-priority": "urgent"})
    assert unknown.status_code == 422 and "'interactive' or 'bulk'" in unknown.text

"""locust scenarios for resnet-serve; every response is checked on content, not just status.

    locust -f loadtest/locust/locustfile.py --host http://127.0.0.1:8000 ClassifyUnique
    locust -f loadtest/locust/locustfile.py --headless -u 16 -t 60s Mixed --mix search=1,add_item=1
    locust -f loadtest/locust/locustfile.py,loadtest/locust/burst.py Mixed  # bursty, see burst.py

Scenarios (user classes): ClassifyUnique (bytes unique per request, so no cache can help),
ClassifyRepeated (four photos over and over: cache hits), Search, AddItems, and Mixed, a
weighted blend of those four (`--mix`). Items the test adds have ids under `loadtest/`.
"""

import random
import sys
import uuid
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from loadtest.common.checks import classification_problem, item_problem, search_problem
from loadtest.common.http_client import multipart_body
from loadtest.common.images import base_jpegs, unique_jpegs
from loadtest.locust.mix import ACTIONS, DEFAULT_MIX, parse_mix

ITEM_PREFIX = "loadtest/"

# Shared by all users of this process (gevent runs them on one thread); the tag keeps the
# images unique across the processes of a distributed run too.
_unique_images = unique_jpegs(tag=uuid.uuid4().hex)
_repeated_images = base_jpegs()
_index_seeded = False


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument("--top-k", type=int, default=5, help="top_k asked of classify")
    parser.add_argument("--search-k", type=int, default=10, help="k asked of search")
    parser.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"Mixed's weights, name=weight for {', '.join(ACTIONS)}",
    )


@events.init.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is not None:
        try:
            parse_mix(environment.parsed_options.mix)  # a typo fails at start, not mid-run
        except ValueError as exc:
            sys.exit(f"locustfile: {exc}")


class ServiceUser(FastHttpUser):
    abstract = True

    def _option(self, name: str) -> Any:
        return getattr(self.environment.parsed_options, name)

    def _upload(
        self,
        method: str,
        path: str,
        name: str,
        image: bytes,
        expected: tuple[int, ...],
        check: Callable[[Any], str | None],
        fields: dict[str, str] | None = None,
    ) -> None:
        content_type, body = multipart_body({"file": ("image.jpg", image)}, fields)
        with self.client.request(
            method,
            path,
            data=body,  # type: ignore[arg-type]  # bytes are sent as is; the hint is too narrow
            headers={"Content-Type": content_type},
            name=name,
            catch_response=True,
        ) as response:
            if response.status_code not in expected:
                response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                problem = check(response.json())
            except ValueError:
                problem = "body is not JSON"
            if problem:
                response.failure(problem)

    def classify_unique(self) -> None:
        self._classify(next(_unique_images), "classify (unique)")

    def classify_repeated(self) -> None:
        self._classify(random.choice(_repeated_images), "classify (repeated)")

    def _classify(self, image: bytes, name: str) -> None:
        top_k = self._option("top_k")
        self._upload(
            "POST",
            f"/v1/classify?top_k={top_k}",
            name,
            image,
            (200,),
            lambda body: classification_problem(body, top_k),
        )

    def search(self) -> None:
        k = self._option("search_k")
        self._upload(
            "POST",
            f"/v1/search?k={k}",
            "search",
            random.choice(_repeated_images),
            (200,),
            lambda body: search_problem(body, k),
        )

    def add_item(self) -> None:
        self._put_item(f"{ITEM_PREFIX}item-{uuid.uuid4().hex}", next(_unique_images), "add item")

    def _put_item(self, item_id: str, image: bytes, name: str) -> None:
        self._upload(
            "PUT",
            f"/v1/items/{item_id}",
            name,
            image,
            (200, 201),
            lambda body: item_problem(body, item_id),
            fields={"metadata": '{"source": "locust"}'},
        )

    def seed_index(self) -> None:
        """Once per process: the four photos as items, so searches have something to find."""
        global _index_seeded
        if not _index_seeded:
            _index_seeded = True
            for number, image in enumerate(_repeated_images):
                self._put_item(f"{ITEM_PREFIX}seed-{number}", image, "seed item")


class ClassifyUnique(ServiceUser):
    @task
    def unique(self) -> None:
        self.classify_unique()


class ClassifyRepeated(ServiceUser):
    @task
    def repeated(self) -> None:
        self.classify_repeated()


class Search(ServiceUser):
    def on_start(self) -> None:
        self.seed_index()

    @task
    def query(self) -> None:
        self.search()


class AddItems(ServiceUser):
    @task
    def add(self) -> None:
        self.add_item()


class Mixed(ServiceUser):
    def on_start(self) -> None:
        mix = parse_mix(self._option("mix"))
        self._actions = [getattr(self, name) for name in mix]
        self._weights = list(mix.values())
        if mix.get("search"):
            self.seed_index()

    @task
    def weighted_action(self) -> None:
        random.choices(self._actions, self._weights)[0]()

"""Run scripted writes against a collection in a child process that then dies without close().

    python -m tests.index.crashing_writer DIR FACTORY SNAPSHOT_EVERY EXACT_UP_TO OPS_JSON
OPS_JSON: [["put", id, row, metadata] | ["delete", id] | ["build"] | ["die_while_building"]
| ["die_writing_header"]], rows of vectors.clustered(N, 32). "build" snapshots every write
made so far (the builds the writes make due start whenever the builder thread gets to
them); the last two ask for a build and die (like kill -9) in the middle of it, or between
its snapshot's data file and header.
"""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.index.vectors import clustered

if TYPE_CHECKING:
    from index.collection import Collection

D_TEST = 32
ROWS = 3000


def run_then_die(
    directory: Path,
    factory: str,
    snapshot_every: int,
    ops: list[list[object]],
    exact_up_to: int = 100_000,
) -> str:
    """The last line the child printed: how it died."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.index.crashing_writer",
            str(directory),
            factory,
            str(snapshot_every),
            str(exact_up_to),
            json.dumps(ops),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    from index.collection import Collection
    from index.vector_index import VectorIndex

    directory, factory, snapshot_every, exact_up_to, ops = sys.argv[1:6]
    xb = clustered(ROWS, D_TEST)
    collection = Collection(
        Path(directory),
        d=D_TEST,
        fingerprint="fp-1",
        model="m",
        factory=factory,
        snapshot_every=int(snapshot_every),
        exact_up_to=int(exact_up_to),
    )
    for op in json.loads(ops):
        if op[0] == "put":
            collection.put(op[1], xb[op[2]], op[3], None)
        elif op[0] == "delete":
            collection.delete(op[1])
        elif op[0] == "build":
            build_now_and_settle(collection)
        elif op[0] == "die_while_building":
            VectorIndex.add = dying_in_the_builder(VectorIndex.add)  # type: ignore[method-assign]
            build_now_and_settle(collection)
        elif op[0] == "die_writing_header":
            os.replace = dying_before(Path(directory) / "snapshot.json", os.replace)  # type: ignore[assignment]
            build_now_and_settle(collection)
    die("finished")


def build_now_and_settle(collection: "Collection") -> None:
    """Ask for a build: the builds the writes made due may all have finished already."""
    collection.build_in_background(fresh=True)
    collection.settle()


def dying_in_the_builder(add: Callable[..., None]) -> Callable[..., None]:
    def add_or_die(self: object, labels: object, xb: object) -> None:
        if threading.current_thread().name == "index-builder":
            die("died in a build")
        add(self, labels, xb)

    return add_or_die


def dying_before(header: Path, replace: Callable[[str, str], None]) -> Callable[..., None]:
    def replace_or_die(source: str, target: str) -> None:
        if Path(str(target)) == header:
            die("died before the header")  # the data file is written, not its header
        replace(source, target)

    return replace_or_die


def die(why: str) -> None:
    print(why, flush=True)
    os._exit(0)  # like kill -9: no close()


if __name__ == "__main__":
    main()

"""Run scripted writes against a collection in a child process that then dies without close().

    python -m tests.index.crashing_writer DIR FACTORY SNAPSHOT_EVERY OPS_JSON
OPS_JSON: [["put", id, row, metadata] | ["delete", id]], rows of vectors.clustered(N, 32).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.index.vectors import clustered

D_TEST = 32
ROWS = 1000


def run_then_die(
    directory: Path, factory: str, snapshot_every: int, ops: list[list[object]]
) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.index.crashing_writer",
            str(directory),
            factory,
            str(snapshot_every),
            json.dumps(ops),
        ],
        check=True,
        timeout=120,
    )


def main() -> None:
    from index.collection import Collection

    directory, factory, snapshot_every, ops = sys.argv[1:5]
    xb = clustered(ROWS, D_TEST)
    collection = Collection(
        Path(directory),
        d=D_TEST,
        fingerprint="fp-1",
        model="m",
        factory=factory,
        snapshot_every=int(snapshot_every),
    )
    for op in json.loads(ops):
        if op[0] == "put":
            collection.put(op[1], xb[op[2]], op[3], None)
        else:
            collection.delete(op[1])
    os._exit(0)  # like kill -9: no close(), no final snapshot


if __name__ == "__main__":
    main()

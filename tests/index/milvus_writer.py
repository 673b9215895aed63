"""`python -m tests.index.milvus_writer DB`: writes to a Milvus Lite index until killed,
printing each acknowledged write ("put ID" once put returned, "deleted ID" once delete
returned): every third item is deleted again right after it is put."""

import sys

from index.milvus_collection import MilvusCollection
from tests.index.vectors import clustered

D = 8


def main() -> None:
    collection = MilvusCollection(sys.argv[1], d=D, fingerprint="f", model="m", prefix="kill")
    vectors = clustered(100_000, D, seed=5)
    for i, vector in enumerate(vectors):
        collection.put(f"i{i}", vector, {"n": i}, b"x" * (i % 3))
        print(f"put i{i}", flush=True)
        if i % 3 == 0:
            collection.delete(f"i{i}")
            print(f"deleted i{i}", flush=True)


if __name__ == "__main__":
    main()

"""The item index on both engines, on the same data: FAISS (this machine's files) and Milvus
(Milvus Lite embedded, or a Milvus server with --milvus-uri).

    python -m loadtest.bench.bench_engines --size 100000 [--data small-clusters]
        [--queries 100] [--milvus-uri http://127.0.0.1:19530]

The data and queries are loadtest.bench.bench_index's (2048-d unit vectors, `bucket` =
row % 1000 independent of the clusters). For each engine: the import rate (FAISS: the store's
bulk insert, then opening the collection builds its index; Milvus: upserts of 1,000 rows),
search p50/p99 and recall@10 at one client against exact search, unfiltered and filtered at
1%, 10% and 90%, write latency (put then delete of 200 items), and this process's resident
memory growth (Milvus Lite runs in this process; a Milvus server's memory is its own).
Milvus Lite is a single-process build of Milvus's core for one machine: the figures say what
an embedded Milvus costs here, not what a cluster of query nodes would serve.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.collection import Collection
from index.milvus_collection import MilvusCollection
from index.store import ItemStore
from loadtest.bench.bench_index import (
    BUCKETS,
    CHUNK,
    FILTERS,
    TopTen,
    clustered,
    machine,
    resident_bytes,
    search_figures,
    small_clusters,
    write_figures,
)

D = 2048
FINGERPRINT, MODEL = "bench-engines", "synthetic"
MEASURED = ("1%", "10%", "90%")
IMPORT_BATCH = 1000


def data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    make = small_clusters if args.data == "small-clusters" else clustered
    return make(args.size, 1, args.size), make(args.queries, 2, args.size)


def truths(vectors: np.ndarray, queries: np.ndarray) -> dict[str, np.ndarray]:
    tops = {"all": TopTen(queries, None)} | {
        name: TopTen(queries, FILTERS[name]) for name in MEASURED
    }
    for start in range(0, len(vectors), CHUNK):
        for top in tops.values():
            top.update(start, vectors[start : start + CHUNK])
    return {name: top.rows for name, top in tops.items()}


def import_faiss(directory: Path, vectors: np.ndarray) -> tuple[Collection, float]:
    started = time.perf_counter()
    store = ItemStore(directory / "items.sqlite3", D, FINGERPRINT, MODEL)
    for start in range(0, len(vectors), CHUNK):
        rows = [
            (f"item-{row}", vectors[row], json.dumps({"bucket": row % BUCKETS}))
            for row in range(start, min(len(vectors), start + CHUNK))
        ]
        store.add_many(rows)
    store.close()
    collection = Collection(directory, d=D, fingerprint=FINGERPRINT, model=MODEL)
    collection.settle()  # the automatic index, built for what came in
    return collection, time.perf_counter() - started


def import_milvus(uri: str, vectors: np.ndarray) -> tuple[MilvusCollection, float]:
    started = time.perf_counter()
    collection = MilvusCollection(uri, d=D, fingerprint=FINGERPRINT, model=MODEL, prefix="bench")
    for start in range(0, len(vectors), IMPORT_BATCH):
        collection.add_many(
            [
                (f"item-{row}", vectors[row], json.dumps({"bucket": row % BUCKETS}))
                for row in range(start, min(len(vectors), start + IMPORT_BATCH))
            ]
        )
    return collection, time.perf_counter() - started


def figures(
    collection: Any, vectors: np.ndarray, queries: np.ndarray, truth: dict[str, np.ndarray]
) -> dict[str, Any]:
    out: dict[str, Any] = {"all": search_figures(collection, queries, truth["all"], None)}
    for name in MEASURED:
        where = {"bucket": list(FILTERS[name])}
        out[name] = search_figures(collection, queries, truth[name], where)
    out["writes"] = write_figures(collection, vectors[:200], "write")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--data", choices=("topics", "small-clusters"), default="topics")
    parser.add_argument("--queries", type=int, default=100, help="held-out queries per figure")
    parser.add_argument("--milvus-uri", help="a Milvus server (default: Milvus Lite, a file)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-engines")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    print(json.dumps(machine()), flush=True)
    vectors, queries = data(args)
    truth = truths(vectors, queries)
    results: dict[str, Any] = {"size": args.size, "data": args.data}
    for engine in ("faiss", "milvus"):
        before = resident_bytes()
        if engine == "faiss":
            collection: Any
            collection, seconds = import_faiss(args.dir / "faiss", vectors)
            kind = collection.stats().kind
        else:
            uri = args.milvus_uri or str(args.dir / "milvus.db")
            collection, seconds = import_milvus(uri, vectors)
            kind = f"Milvus at {uri}"
        try:
            measured = figures(collection, vectors, queries, truth)
        finally:
            grown = resident_bytes() - before
            collection.close()
        results[engine] = {
            "index": kind,
            "import_items_per_s": round(args.size / seconds),
            "rss_growth_mb": round(grown / 2**20),
            **measured,
        }
        print(engine, json.dumps(results[engine]), flush=True)
    (args.dir / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| engine | import items/s | search p50 / p99 ms, recall@10 | 1% | 10% | 90% "
        "| write p50 / p99 ms | memory MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for engine in ("faiss", "milvus"):
        r = results[engine]
        cells = [
            f"{r[name]['p50_ms']} / {r[name]['p99_ms']}, {r[name]['recall_at_10']}"
            for name in ("all", *MEASURED)
        ]
        lines.append(
            f"| {engine} ({r['index']}) | {r['import_items_per_s']} | {' | '.join(cells)} "
            f"| {r['writes']['p50_ms']} / {r['writes']['p99_ms']} | {r['rss_growth_mb']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

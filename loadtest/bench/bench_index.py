"""Index benchmark at scale: import, build, search (plain and filtered), memory, start-up,
writes during a background build, and the same search over HTTP.

    python -m loadtest.bench.bench_index --size 1000000 --dir /tmp/bench-index [--http]
        [--data small-clusters]

The data (`--data topics`, the default): `size` unit vectors (2048-d, like ResNet50
embeddings) in a mixture of clusters on the sphere, two levels deep as photo collections
are: size/1000 topics (like ImageNet's classes), each of 20 groups of about 50 (an object,
a scene, a burst of shots), with isotropic spread inside a group. All share a mean
direction (pooled CNN features are non-negative, so unrelated images still score about
0.3, as real ones do). Queries are held-out vectors from the same groups.
`--data small-clusters`: many small, tight clusters (size/100 of them, 100 members each;
two members score about 0.55, strangers about 0), no shared direction: the data where a
filter that is independent of the clusters leaves a query's true top 10 in many lists.
Metadata `bucket` = row % 1000, independent of the clusters in both: {"bucket": 0} matches
0.1%, ten buckets 1%, and so on to 90%.

Steps, each printed as it finishes and all written to DIR/results.json:
1. write the vectors as Parquet (float32 lists) and import them with the import-vectors
   code path (vectors/s), computing the exact top 10 of every query on the way;
2. open the collection: the first open builds the automatic index (timed);
3. in a fresh process (so memory is the index's): start-up after a clean shutdown, search
   p50/p99 and recall@10 at one client, plain and filtered, resident memory;
4. writes (PUT-like puts) at this size and, for comparison, at 1,000 items: p50/p99/max;
   then a fresh background build, with writes and searches measured while it runs;
5. with --http: the service (ResNet50, random weights: the fingerprint the index was made
   with) on the same index: GET /v1/items/{id}/similar p50 against in-process.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.collection import Collection
from index.milvus_collection import MilvusCollection
from loadtest.common.processes import free_port, start_service, stop

D = 2048
QUERIES = 200
CHUNK = 20_000
PER_TOPIC = 1000
GROUPS_PER_TOPIC = 20
FILTERS = {
    "0.1%": [0],
    "1%": list(range(10)),
    "10%": list(range(100)),
    "50%": list(range(500)),
    "90%": list(range(900)),
}
BUCKETS = 1000
CLUSTER_SIZE = 100  # --data small-clusters
WRITES = 1000


def clustered(n: int, seed: int, total: int, d: int = D) -> np.ndarray:
    """n unit vectors from the clusters of a data set of `total` (same clusters every call)."""
    base = np.random.default_rng(12345)
    mean = np.abs(base.standard_normal(d)).astype(np.float32)
    mean /= np.linalg.norm(mean)
    groups = max(1, total // PER_TOPIC) * GROUPS_PER_TOPIC
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, CHUNK):
        m = min(n, start + CHUNK) - start
        which = rng.integers(0, groups, m)
        # Centres come from their own seeds: they never all need to be in memory at once.
        topics = np.stack([_centre(int(g) // GROUPS_PER_TOPIC, d) for g in which])
        own = np.stack([_centre(-1 - int(g), d) for g in which])
        block = 0.6 * mean + 0.65 * topics + 0.45 * own
        block += rng.standard_normal((m, d), dtype=np.float32) * (0.4 / np.sqrt(d))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def small_clusters(n: int, seed: int, total: int, d: int = D) -> np.ndarray:
    """n unit vectors from total/CLUSTER_SIZE small, tight clusters (same ones every call)."""
    count = max(1, total // CLUSTER_SIZE)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, CHUNK):
        m = min(n, start + CHUNK) - start
        centres = np.stack([_centre(int(c), d) for c in rng.integers(0, count, m)])
        block = 0.74 * centres + 0.67 * rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(d)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


_CENTRES: dict[int, np.ndarray] = {}


def _centre(i: int, d: int) -> np.ndarray:
    if i not in _CENTRES:
        centre = np.random.default_rng(1_000_000 + i).standard_normal(d).astype(np.float32)
        _CENTRES[i] = centre / np.linalg.norm(centre)
    return _CENTRES[i]


class TopTen:
    """The exact 10 nearest rows of each query (optionally among some buckets), fed in chunks."""

    def __init__(self, queries: np.ndarray, buckets: list[int] | None) -> None:
        self.queries = queries
        self.buckets = None if buckets is None else np.array(buckets)
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.rows = np.zeros((len(queries), 0), np.int64)

    def update(self, first_row: int, vectors: np.ndarray) -> None:
        rows = np.arange(first_row, first_row + len(vectors))
        if self.buckets is not None:
            keep = np.isin(rows % BUCKETS, self.buckets)
            rows, vectors = rows[keep], vectors[keep]
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        every = np.concatenate(
            [self.rows, np.broadcast_to(rows, (len(self.queries), len(rows)))], axis=1
        )
        best = np.argsort(-scores, axis=1)[:, :10]
        self.scores = np.take_along_axis(scores, best, axis=1)
        self.rows = np.take_along_axis(every, best, axis=1)


def model_identity() -> tuple[str, str]:
    """The fingerprint and id of ResNet50 with random weights (what --http serves)."""
    from service.model.runtime import load_parts
    from service.settings import Settings

    spec = load_parts(Settings.model_validate({"weights": "random"})).spec
    assert spec.embedding_dim == D
    return spec.fingerprint, spec.model_id


def prepare(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Steps 1 and 2: the Parquet file, the import, the truth, the first build."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from service.items.vector_import import ExpectedModel, import_vectors

    fingerprint, model = model_identity()
    vectors = small_clusters if args.data == "small-clusters" else clustered
    queries = vectors(QUERIES, seed=2, total=args.size)
    truths = {"all": TopTen(queries, None)} | {
        name: TopTen(queries, buckets) for name, buckets in FILTERS.items()
    }
    parquet = args.dir / "vectors.parquet"
    started = time.perf_counter()
    schema = pa.schema(
        [("id", pa.string()), ("vector", pa.list_(pa.float32())), ("metadata", pa.string())]
    )
    with pq.ParquetWriter(parquet, schema) as writer:
        for start in range(0, args.size, CHUNK):
            block = vectors(min(CHUNK, args.size - start), seed=1000 + start, total=args.size)
            for truth in truths.values():
                truth.update(start, block)
            rows = range(start, start + len(block))
            writer.write_table(
                pa.table(
                    {
                        "id": [f"item-{i}" for i in rows],
                        "vector": pa.FixedSizeListArray.from_arrays(
                            pa.array(block.ravel()), D
                        ).cast(pa.list_(pa.float32())),
                        "metadata": [json.dumps({"bucket": i % BUCKETS}) for i in rows],
                    },
                    schema=schema,
                )
            )
    results["parquet_write_s"] = round(time.perf_counter() - started, 1)
    arrays = {"queries": queries} | {name: truth.rows for name, truth in truths.items()}
    np.savez(args.dir / "truth.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub
    (args.dir / "model.json").write_text(json.dumps({"fingerprint": fingerprint, "model": model}))
    started = time.perf_counter()
    report = import_vectors(
        parquet,
        fingerprint,
        ExpectedModel(fingerprint, D, model),
        args.dir / "data" / "index",
        progress=False,
    )
    seconds = time.perf_counter() - started
    results["import"] = {
        "rows": report.rows,
        "added": report.added,
        "seconds": round(seconds, 1),
        "vectors_per_s": round(report.added / seconds),
    }
    show("import", results["import"])
    parquet.unlink()
    started = time.perf_counter()
    collection = open_index(args.dir, fingerprint, model)
    results["first_build_s"] = round(time.perf_counter() - started, 1)
    results["index"] = stats_of(collection)
    collection.close()
    show("first build", {"seconds": results["first_build_s"], **results["index"]})


def open_index(directory: Path, fingerprint: str, model: str) -> Collection:
    return Collection(directory / "data" / "index", d=D, fingerprint=fingerprint, model=model)


def stats_of(collection: Collection) -> dict[str, Any]:
    stats = collection.stats()
    return {
        "count": stats.count,
        "kind": stats.kind,
        "nprobe": stats.nprobe,
        "reason": stats.reason,
        "index_bytes_per_item": stats.index_bytes_per_item,
        "filtered": stats.filtered,
        "filtered_exact_up_to": stats.filtered_exact_up_to,
    }


def probe(directory: Path) -> dict[str, Any]:
    """Step 3 and 4, in a process of their own."""
    identity = json.loads((directory / "model.json").read_text())
    truth = np.load(directory / "truth.npz")
    queries = truth["queries"]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    collection = open_index(directory, identity["fingerprint"], identity["model"])
    out["startup_s"] = round(time.perf_counter() - started, 2)
    out["index"] = stats_of(collection)
    try:
        # Warm: the first searches and writes of a process fault in the SQLite pages that
        # re-ranking reads; a serving index is past that.
        for vector in clustered(50, seed=3, total=out["index"]["count"]):
            collection.search(vector, 10)
        write_figures(collection, clustered(200, seed=4, total=1000), "warm")
        out["search"] = {"all": search_figures(collection, queries, truth["all"], None)}
        for name, buckets in FILTERS.items():
            out["search"][name] = search_figures(
                collection, queries, truth[name], {"bucket": list(buckets)}
            )
        out["resident_bytes"] = resident_bytes()
        out["resident_bytes_per_item"] = round(out["resident_bytes"] / out["index"]["count"])
        writes = clustered(WRITES, seed=7, total=out["index"]["count"])
        out["writes"] = write_figures(collection, writes, "new")
        out["during_build"] = during_build(collection, queries, truth["all"], writes)
    finally:
        collection.close()
    with tempfile.TemporaryDirectory() as small:
        little = Collection(Path(small), d=D, fingerprint="fp", model="m")
        try:
            for i, vector in enumerate(clustered(1000, seed=8, total=1000)):
                little.put(f"item-{i}", vector, {}, None)
            little.settle()
            write_figures(little, clustered(200, seed=4, total=1000), "warm")
            out["writes_at_1k"] = write_figures(little, writes, "new")
        finally:
            little.close()
    return out


def search_figures(
    collection: Collection | MilvusCollection,
    queries: np.ndarray,
    truth: np.ndarray,
    where: dict[str, list[Any]] | None,
) -> dict[str, float | str]:
    latencies, recall = [], []
    for query, best in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = collection.search(query, 10, where=where)
        latencies.append(time.perf_counter() - started)
        expected = {f"item-{row}" for row in best}
        recall.append(len({hit.id for hit in hits} & expected) / 10)
    plan: dict[str, float | str] = {}
    if where is not None and isinstance(collection, Collection):
        plan["plan"] = collection.filtered_route(where).plan
    return {**quantiles_ms(latencies), "recall_at_10": round(float(np.mean(recall)), 3), **plan}


def write_figures(
    collection: Collection | MilvusCollection, vectors: np.ndarray, prefix: str
) -> dict[str, float]:
    latencies = []
    for i, vector in enumerate(vectors):
        started = time.perf_counter()
        collection.put(f"{prefix}-{i}", vector, {"bucket": i % 100}, None)
        latencies.append(time.perf_counter() - started)
    for i in range(len(vectors)):  # and away again: the recall figures stay comparable
        started = time.perf_counter()
        collection.delete(f"{prefix}-{i}")
        latencies.append(time.perf_counter() - started)
    return quantiles_ms(latencies)


def during_build(
    collection: Collection, queries: np.ndarray, truth: np.ndarray, vectors: np.ndarray
) -> dict[str, Any]:
    """A fresh build (trained again) in the background; writes from one thread and searches
    from another until it is swapped in."""
    collection.build_in_background(fresh=True)
    while collection.stats().building is None:
        time.sleep(0.01)
    started = time.perf_counter()
    write_latencies: list[float] = []
    search_latencies: list[float] = []
    stop = threading.Event()

    def searcher() -> None:
        i = 0
        while not stop.is_set():
            began = time.perf_counter()
            collection.search(queries[i % len(queries)], 10)
            search_latencies.append(time.perf_counter() - began)
            i += 1

    thread = threading.Thread(target=searcher)
    thread.start()
    i = 0
    while collection.stats().building is not None:
        began = time.perf_counter()
        collection.put(f"during-{i}", vectors[i % len(vectors)], {}, None)
        write_latencies.append(time.perf_counter() - began)
        i += 1
        time.sleep(0.005)  # a steady stream, not a flood: the build must get CPU too
    stop.set()
    thread.join()
    for written in range(i):
        collection.delete(f"during-{written}")
    return {
        "build_s": round(time.perf_counter() - started, 1),
        "writes": quantiles_ms(write_latencies),
        "searches": quantiles_ms(search_latencies),
        "after": search_figures(collection, queries, truth, None),
    }


def http_figures(directory: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Step 5: /v1/items/{id}/similar over HTTP, and the same in process, on one index."""
    import httpx

    ids = [f"item-{i}" for i in range(200)]
    port = free_port()
    env = os.environ | {
        "RESNET_SERVE_WEIGHTS": "random",
        "RESNET_SERVE_DATA_DIR": str(directory / "data"),
        "RESNET_SERVE_BACKEND": "torch",
        "RESNET_SERVE_PRECISION": "fp32",
        "RESNET_SERVE_UI": "false",
    }
    process = start_service(env, port, ready_timeout_s=600)
    try:
        latencies = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for item_id in ids * 2:
                began = time.perf_counter()
                answer = client.get(f"/v1/items/{item_id}/similar", params={"k": 10})
                latencies.append(time.perf_counter() - began)
                answer.raise_for_status()
    finally:
        stop(process)
    identity = json.loads((directory / "model.json").read_text())
    collection = open_index(directory, identity["fingerprint"], identity["model"])
    try:
        inside = []
        for item_id in ids * 2:
            began = time.perf_counter()
            collection.similar(item_id, 10)
            inside.append(time.perf_counter() - began)
    finally:
        collection.close()
    return {
        "http": quantiles_ms(latencies[len(ids) :]),
        "in_process": quantiles_ms(inside[len(ids) :]),
    }


def quantiles_ms(latencies: list[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {"n": len(latencies)}
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "n": len(latencies),
        "p50_ms": round(1000 * cuts[49], 2),
        "p99_ms": round(1000 * cuts[98], 2),
        "max_ms": round(1000 * max(latencies), 2),
    }


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def machine() -> dict[str, Any]:
    flags = ""
    model = platform.processor()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if f in flags.split()],
    }


def show(step: str, figures: dict[str, Any]) -> None:
    print(f"{step}: {json.dumps(figures)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-index")
    parser.add_argument("--reuse", action="store_true", help="keep DIR's index (skip steps 1-2)")
    parser.add_argument("--data", choices=("topics", "small-clusters"), default="topics")
    parser.add_argument("--http", action="store_true", help="step 5: search over HTTP too")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:  # the child process of step 3
        print(json.dumps(probe(args.dir)))
        return
    results: dict[str, Any] = {"size": args.size, "data": args.data, "machine": machine()}
    if not args.reuse:
        shutil.rmtree(args.dir, ignore_errors=True)
        args.dir.mkdir(parents=True)
        prepare(args, results)
    child = subprocess.run(
        [sys.executable, "-m", "loadtest.bench.bench_index", "--dir", str(args.dir), "--probe"],
        check=True,
        capture_output=True,
        text=True,
    )
    results["probe"] = json.loads(child.stdout.strip().splitlines()[-1])
    show("probe", results["probe"])
    if args.http:
        results["http_similar"] = http_figures(args.dir, results)
        show("http", results["http_similar"])
    (args.dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"written to {args.dir / 'results.json'}")


if __name__ == "__main__":
    main()

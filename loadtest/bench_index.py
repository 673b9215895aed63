"""Index benchmark: add rate, single-query search latency, recall@10, memory per vector, and
what adding and removing vectors one at a time costs at that size (as item PUTs and DELETEs
do; the writer holds the index's exclusive lock meanwhile, so searches wait that long).

    python -m loadtest.bench_index --sizes 10000 100000 --kinds Flat HNSW32 IVF1024,Flat

Synthetic clustered unit vectors (2048-d by default, like ResNet50 embeddings); queries come
from the same clusters. Each index is the service's own VectorIndex (same search parameters),
built and measured alone, then freed. Recall is against exact search on the same data.
Memory is the growth of this process's resident set while the index is built, per vector.
"""

import argparse
import gc
import os
import statistics
import time

import numpy as np

from index.vector_index import VectorIndex

QUERIES = 200
CHUNK = 50_000
SINGLE_ADDS = 2_000  # then added one at a time, as item PUTs add them
SINGLE_REMOVES = 200  # then removed one at a time, as item DELETEs remove them


def clustered(n: int, d: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """n unit vectors around `clusters` random centres, generated in chunks to bound memory."""
    centres = np.random.default_rng(12345).standard_normal((clusters, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(kind: str, xb: np.ndarray, xq: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    gc.collect()
    before = resident_bytes()
    index = VectorIndex(xb.shape[1], kind)
    train_s = 0.0
    if index.is_ivf:
        started = time.perf_counter()
        sample = xb[np.random.default_rng(0).choice(len(xb), min(len(xb), 100_000), replace=False)]
        index.train(sample)
        del sample
        train_s = time.perf_counter() - started
    labels = np.arange(len(xb), dtype=np.int64)
    started = time.perf_counter()
    for start in range(0, len(xb), CHUNK):
        index.add(labels[start : start + CHUNK], xb[start : start + CHUNK])
    add_s = time.perf_counter() - started
    memory = resident_bytes() - before
    latencies, found = [], []
    for query in xq:  # one query at a time, as the service searches
        started = time.perf_counter()
        _, labels_found = index.search(query.reshape(1, -1), 10)
        latencies.append(time.perf_counter() - started)
        found.append(labels_found[0])
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    quantiles = statistics.quantiles(latencies, n=100)
    singles = clustered(SINGLE_ADDS, xb.shape[1], seed=3)
    add_latencies = []
    for i, vector in enumerate(singles):
        started = time.perf_counter()
        index.add(np.array([len(xb) + i], np.int64), vector.reshape(1, -1))
        add_latencies.append(time.perf_counter() - started)
    remove_latencies = []
    for label in np.random.default_rng(4).choice(len(xb), SINGLE_REMOVES, replace=False):
        started = time.perf_counter()
        index.remove(np.array([label], np.int64))
        remove_latencies.append(time.perf_counter() - started)
    del index
    return {
        "train_s": train_s,
        "add_per_s": len(xb) / add_s,
        "single_add_ms": 1000 * statistics.mean(add_latencies),
        "single_add_max_ms": 1000 * max(add_latencies),
        "single_remove_ms": 1000 * statistics.mean(remove_latencies),
        "p50_ms": 1000 * quantiles[49],
        "p99_ms": 1000 * quantiles[98],
        "qps": 1 / statistics.mean(latencies),
        "recall": float(recall),
        "bytes_per_vector": memory / len(xb),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["Flat", "HNSW32", "IVF1024,Flat"])
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    print(
        f"d={args.dim}, {QUERIES} single queries, k=10, nprobe=16, efSearch=64, "
        f"{os.cpu_count()} cores"
    )
    print(
        "| n | index | train s | add vec/s | search p50 ms | p99 ms | qps | recall@10 | bytes/vec "
        f"| {SINGLE_ADDS:,} single adds: mean / max ms | {SINGLE_REMOVES} single removes: mean ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        xb = clustered(n, args.dim, seed=1)
        xq = clustered(QUERIES, args.dim, seed=2)
        exact = VectorIndex(args.dim)
        exact.add(np.arange(n, dtype=np.int64), xb)
        _, truth = exact.search(xq, 10)
        del exact
        for kind in args.kinds:
            r = measure(kind, xb, xq, truth)
            print(
                f"| {n:,} | {kind} | {r['train_s']:.1f} | {r['add_per_s']:,.0f} | "
                f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:,.0f} | {r['recall']:.3f} | "
                f"{r['bytes_per_vector']:,.0f} | "
                f"{r['single_add_ms']:.2f} / {r['single_add_max_ms']:.0f} | "
                f"{r['single_remove_ms']:.2f} |",
                flush=True,
            )
        del xb


if __name__ == "__main__":
    main()

"""Embeddings of a data set from the serving backend, kept on disk between runs.

Keyed by the file's content hash and the model fingerprint, so a second run (or one with
other head settings) embeds nothing again, and a changed file or model is embedded afresh.
"""

import hashlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.items.bulk import embed_batch
from service.model.runtime import ModelRuntime


class EmbeddingCache:
    def __init__(self, path: Path, fingerprint: str, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embedding "
            "(fingerprint TEXT, sha256 TEXT, vector BLOB, PRIMARY KEY (fingerprint, sha256))"
        )
        self._fingerprint = fingerprint
        self._dim = dim

    def get(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(digests), 500):  # SQLite's bound-parameter limit
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = "SELECT sha256, vector FROM embedding WHERE fingerprint = ? AND sha256 IN "
            rows = self._db.execute(f"{query}({marks})", [self._fingerprint, *chunk])
            found.update({sha: np.frombuffer(blob, np.float32) for sha, blob in rows})
        return {sha: vector for sha, vector in found.items() if vector.size == self._dim}

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embedding VALUES (?, ?, ?)",
                [
                    (self._fingerprint, sha, np.ascontiguousarray(v, np.float32).tobytes())
                    for sha, v in items.items()
                ],
            )

    def close(self) -> None:
        self._db.close()


def embed_files(
    runtime: ModelRuntime, paths: Sequence[Path], cache: EmbeddingCache, progress: bool
) -> tuple[np.ndarray, list[int], list[tuple[Path, str]]]:
    """Embeddings of the files that decode, which of `paths` they are (row order), and the
    (file, why) of those that do not."""
    datas = [path.read_bytes() for path in paths]
    digests = [hashlib.sha256(data).hexdigest() for data in datas]
    known = cache.get(digests)
    todo = [i for i, sha in enumerate(digests) if sha not in known]
    failed: dict[int, str] = {}
    with (
        tqdm(total=len(todo), disable=not progress or not todo, unit="img", desc="embed") as bar,
        ThreadPoolExecutor() as pool,
    ):
        for start in range(0, len(todo), runtime.batch_size):
            chunk = todo[start : start + runtime.batch_size]
            fresh = {}
            for i, result in zip(
                chunk, embed_batch(runtime, pool, [datas[i] for i in chunk]), strict=True
            ):
                if isinstance(result, str):
                    failed[i] = result
                else:
                    fresh[digests[i]] = result
            cache.put(fresh)
            known.update(fresh)
            bar.update(len(chunk))
    kept = [i for i in range(len(paths)) if i not in failed]
    vectors = np.stack([known[digests[i]] for i in kept]) if kept else np.zeros((0, 1), np.float32)
    return vectors, kept, [(paths[i], why) for i, why in sorted(failed.items())]

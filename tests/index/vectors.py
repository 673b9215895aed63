"""Synthetic clustered unit vectors, like image embeddings: many near-duplicates per topic."""

import numpy as np


def clustered(n: int, d: int, clusters: int = 100, noise: float = 0.8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    xb = centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)).astype(
        np.float32
    )
    normalised: np.ndarray = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    return normalised

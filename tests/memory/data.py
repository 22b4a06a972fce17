"""Embedding-like test vectors: a mixture in a 24-dimensional latent space, projected to ``dim``
and normalised (real sentence embeddings have a low intrinsic dimension; uniform random
384-dimensional vectors do not, and no ANN index does well on them)."""

from __future__ import annotations

import numpy as np


def embedding_like(n: int, *, dim: int = 384, latent: int = 24, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    centers = rng.standard_normal((64, latent))
    z = centers[rng.integers(0, 64, n)] + 0.7 * rng.standard_normal((n, latent))
    x = (z @ proj + 0.05 * rng.standard_normal((n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)

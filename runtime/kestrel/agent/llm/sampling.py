"""Choosing the next token from logits: greedy, or seeded temperature/top-k/top-p sampling.

Pure functions over numpy arrays. Greedy breaks ties by the lowest token id
(``argmax``), so it is deterministic across runs and machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import GenerationOptions

if TYPE_CHECKING:  # numpy is imported lazily by the callers that need it
    import numpy as np

__all__ = ["Sampler"]


class Sampler:
    """Picks tokens for one generation; owns its seeded random generator."""

    def __init__(self, options: GenerationOptions) -> None:
        import numpy as np

        self._np = np
        self._options = options
        self._rng = np.random.default_rng(options.seed) if not options.greedy else None

    def pick(self, logits: np.ndarray) -> int:
        """``logits``: 1-D float array over the vocabulary."""
        np = self._np
        if self._rng is None:
            return int(np.argmax(logits))
        opts = self._options
        scaled = logits.astype(np.float64) / opts.temperature
        if opts.top_k and opts.top_k < scaled.shape[0]:
            kth = np.partition(scaled, -opts.top_k)[-opts.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if opts.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cum = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cum, opts.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask / mask.sum()
        return int(self._rng.choice(probs.shape[0], p=probs))

"""Exponential backoff with jitter (pure: the random source is injectable)."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``, each drawn uniformly from
    ``[(1 - jitter) * d, d]`` so that many devices do not retry in lock-step."""

    def __init__(
        self, *, initial: float, maximum: float, jitter: float = 0.5, rng: Callable[[], float] = random.random
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be within 0..1")
        self.initial, self.maximum, self.jitter, self._rng = initial, maximum, jitter, rng
        self.attempts = 0

    def next(self) -> float:
        d = min(self.maximum, self.initial * (2 ** min(self.attempts, 62)))
        self.attempts += 1
        return d * (1 - self.jitter * self._rng())

    def reset(self) -> None:
        self.attempts = 0

"""Backoff: exponential, capped, jittered within bounds, reset."""

from __future__ import annotations

import random

import pytest

from kestrel.io.backoff import Backoff


def test_exponential_capped_without_jitter():
    b = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_jitter_stays_within_half_to_full_delay():
    rng = random.Random(7)
    b = Backoff(initial=1.0, maximum=8.0, jitter=0.5, rng=rng.random)
    delays = [b.next() for _ in range(200)]
    caps = [min(8.0, 2.0**i) for i in range(200)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len({round(d, 6) for d in delays[10:]}) > 50  # really spread, not lock-step


def test_many_attempts_do_not_overflow():
    b = Backoff(initial=0.1, maximum=30.0, jitter=0.0)
    for _ in range(5000):
        d = b.next()
    assert d == 30.0


def test_invalid_parameters():
    with pytest.raises(ValueError):
        Backoff(initial=0, maximum=1)
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)
    with pytest.raises(ValueError):
        Backoff(initial=1, maximum=2, jitter=1.5)

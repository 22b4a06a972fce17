"""Pure helpers for the sync loop: the bandwidth cap and the retention policy (explicit ``now``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["TokenBucket", "RetentionPolicy", "retention_warnings", "prune_point"]


class TokenBucket:
    """Bytes-per-second cap with a burst allowance. ``reserve`` returns how long to wait first."""

    def __init__(self, rate: float, *, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens, self._at = float(burst), now

    def reserve(self, nbytes: int, *, now: float) -> float:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= nbytes  # may go negative: a message larger than the burst still goes, later
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass(frozen=True)
class RetentionPolicy:
    """How much flash the ledger may use, and what happens at the limit.

    ``on_full``: ``"keep"`` (default: never drop a record before it is synced; the owner is
    warned), ``"drop-synced"`` (records already acknowledged may be pruned). Records that are not
    yet synced are dropped only under ``"drop-oldest"``, which the owner must choose explicitly.
    Warnings start at ``warn_fraction`` of ``max_bytes``; pruning starts halfway between that and
    the limit (:attr:`prune_at`) and frees whole segments until usage is below the warning level.
    """

    max_bytes: int | None = None
    warn_fraction: float = 0.8
    on_full: str = "keep"

    def __post_init__(self) -> None:
        if self.on_full not in ("keep", "drop-synced", "drop-oldest"):
            raise ValueError(f"unknown retention on_full {self.on_full!r}")
        if not 0 < self.warn_fraction <= 1:
            raise ValueError("warn_fraction must be in (0, 1]")

    @property
    def prune_at(self) -> float:
        """Usage (bytes) at which pruning starts (``max_bytes`` if none)."""
        return (1 + self.warn_fraction) / 2 * self.max_bytes if self.max_bytes else float("inf")


def retention_warnings(policy: RetentionPolicy, *, used_bytes: int, backlog: int) -> tuple[str, ...]:
    """Warnings to show (and record) for the current flash usage; empty when all is well."""
    if policy.max_bytes is None:
        return ()
    frac = used_bytes / policy.max_bytes
    if frac < policy.warn_fraction:
        return ()
    level = "limit reached" if frac >= 1 else f"{frac:.0%} of the retention limit"
    what = {
        "keep": f"{backlog} unsynced records are kept; the ledger will exceed the limit until the broker is reachable",
        "drop-synced": "records already synced will be pruned",
        "drop-oldest": f"the oldest records will be pruned even if not synced ({backlog} unsynced)",
    }
    return (f"ledger uses {used_bytes} bytes, {level} ({policy.max_bytes} bytes): {what[policy.on_full]}",)


def prune_point(
    policy: RetentionPolicy, *, used_bytes: int, segments: Sequence[tuple[int, int]], acked: int, size: int
) -> int | None:
    """Where to prune (the ``before_seq`` for ``Ledger.prune``), or None to keep everything.

    ``segments``: (first seq, bytes) of each segment, oldest first (the last is being written and
    never pruned). ``drop-synced`` never goes past ``acked``; ``drop-oldest`` may go up to ``size``.
    The oldest segments go until usage falls below ``warn_fraction * max_bytes``.
    """
    if policy.max_bytes is None or policy.on_full == "keep" or used_bytes < policy.prune_at:
        return None
    allowed = acked if policy.on_full == "drop-synced" else size
    excess = used_bytes - policy.warn_fraction * policy.max_bytes
    freed, before = 0, None
    for (_, nbytes), (nxt, _) in zip(segments, segments[1:], strict=False):
        if nxt > allowed or freed >= excess:
            break
        freed += nbytes
        before = nxt
    return before

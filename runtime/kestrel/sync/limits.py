"""Pure helpers for the sync loop: the bandwidth cap and the retention policy (explicit ``now``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TokenBucket", "RetentionPolicy", "retention_warnings"]


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
    """

    max_bytes: int | None = None
    warn_fraction: float = 0.8
    on_full: str = "keep"

    def __post_init__(self) -> None:
        if self.on_full not in ("keep", "drop-synced", "drop-oldest"):
            raise ValueError(f"unknown retention on_full {self.on_full!r}")
        if not 0 < self.warn_fraction <= 1:
            raise ValueError("warn_fraction must be in (0, 1]")


def retention_warnings(policy: RetentionPolicy, *, used_bytes: int, backlog: int) -> tuple[str, ...]:
    """Warnings to show (and record) for the current flash usage; empty when all is well."""
    if policy.max_bytes is None:
        return ()
    frac = used_bytes / policy.max_bytes
    if frac < policy.warn_fraction:
        return ()
    level = "limit reached" if frac >= 1 else f"{frac:.0%} of the retention limit"
    what = {"keep": f"{backlog} unsynced records are kept; the ledger will exceed the limit until the broker is "
                    "reachable",
            "drop-synced": "records already synced will be pruned",
            "drop-oldest": f"the oldest records will be pruned even if not synced ({backlog} unsynced)"}
    return (f"ledger uses {used_bytes} bytes, {level} ({policy.max_bytes} bytes): {what[policy.on_full]}",)

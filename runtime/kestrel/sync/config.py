"""The ``sync:`` section of the device config (pure parse of a plain mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .limits import RetentionPolicy

__all__ = ["SyncConfig", "parse_sync_config"]


@dataclass(frozen=True)
class SyncConfig:
    enabled: bool = True
    batch_records: int = 256  # most records in one MQTT message
    batch_bytes: int = 48 * 1024  # most payload bytes in one MQTT message (below the bridge's max_payload)
    max_inflight: int = 8  # messages awaiting PUBACK
    bandwidth: float | None = None  # bytes per second; None: no cap
    burst: int = 64 * 1024
    poll_s: float = 0.2  # how often an idle sync looks for new records
    status_s: float = 2.0  # how often status.json is rewritten
    offset_s: float = 0.25  # how often the acknowledged offset is persisted (at most)
    retry_s: float = 1.0  # pause after a failed publish
    resend_interval_s: float = 60.0  # honour at most one collector resend request per interval
    ack_timeout_s: float = 30.0  # connected but no PUBACK for this long: resend from the acknowledged offset
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


_NUM = {
    "batch_records": (int, 1, 100_000),
    "batch_bytes": (int, 1024, 1 << 20),
    "max_inflight": (int, 1, 1000),
    "bandwidth": (float, 1.0, 1e12),
    "burst": (int, 1024, 1 << 30),
    "poll_s": (float, 0.01, 60.0),
    "status_s": (float, 0.1, 3600.0),
    "offset_s": (float, 0.0, 60.0),
    "retry_s": (float, 0.01, 600.0),
    "ack_timeout_s": (float, 1.0, 3600.0),
    "resend_interval_s": (float, 0.0, 86400.0),
}


def parse_sync_config(doc: Mapping[str, Any] | None, *, source: str = "<config>") -> SyncConfig:
    """Build a SyncConfig from the ``sync:`` mapping; ConfigError names the bad key."""
    if doc is None:
        return SyncConfig()
    if not isinstance(doc, Mapping):
        raise ConfigError("the sync section must be a mapping", path=source, key="sync")
    unknown = set(doc) - set(_NUM) - {"enabled", "retention"}
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)}",
            path=source,
            key="sync",
            hint=f"known keys: enabled, retention, {', '.join(sorted(_NUM))}",
        )
    values: dict[str, Any] = {}
    for key, (typ, lo, hi) in _NUM.items():
        if key in doc and doc[key] is not None:
            v = doc[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not isinstance(v, int)):
                raise ConfigError(f"must be a {typ.__name__}", path=source, key=f"sync.{key}")
            if not lo <= v <= hi:
                raise ConfigError(f"must be between {lo} and {hi}", path=source, key=f"sync.{key}")
            values[key] = typ(v)
    if "enabled" in doc:
        if not isinstance(doc["enabled"], bool):
            raise ConfigError("must be true or false", path=source, key="sync.enabled")
        values["enabled"] = doc["enabled"]
    ret = doc.get("retention") or {}
    if not isinstance(ret, Mapping) or set(ret) - {"max_bytes", "warn_fraction", "on_full"}:
        raise ConfigError("must be a mapping with max_bytes, warn_fraction, on_full", path=source, key="sync.retention")
    try:
        max_bytes = ret.get("max_bytes")
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError("max_bytes must be a positive integer")
        values["retention"] = RetentionPolicy(
            max_bytes, float(ret.get("warn_fraction", 0.8)), str(ret.get("on_full", "keep"))
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), path=source, key="sync.retention") from None
    return SyncConfig(**values)

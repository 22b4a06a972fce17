"""The sync config section and the pure limits (token bucket, retention warnings)."""

from __future__ import annotations

import pytest

from kestrel.errors import ConfigError
from kestrel.sync.config import SyncConfig, parse_sync_config
from kestrel.sync.limits import RetentionPolicy, TokenBucket, retention_warnings


def test_defaults_and_values():
    assert parse_sync_config(None) == SyncConfig()
    cfg = parse_sync_config(
        {"bandwidth": 2048, "batch_records": 10, "retention": {"max_bytes": 1000, "on_full": "drop-synced"}}
    )
    assert cfg.bandwidth == 2048.0 and cfg.batch_records == 10
    assert cfg.retention == RetentionPolicy(1000, 0.8, "drop-synced")


@pytest.mark.parametrize(
    "doc, key",
    [
        ({"bandwidth": "fast"}, "sync.bandwidth"),
        ({"batch_records": 0}, "sync.batch_records"),
        ({"batch_records": 1.5}, "sync.batch_records"),
        ({"nope": 1}, "sync"),
        ({"enabled": "yes"}, "sync.enabled"),
        ({"retention": {"on_full": "explode"}}, "sync.retention"),
        ({"retention": {"max_bytes": -1}}, "sync.retention"),
        ({"retention": [1]}, "sync.retention"),
        ([1, 2], "sync"),
    ],
)
def test_bad_config_names_the_key(doc, key):
    with pytest.raises(ConfigError) as exc:
        parse_sync_config(doc, source="device.yaml")
    assert exc.value.key == key and "device.yaml" in str(exc.value)


def test_token_bucket():
    b = TokenBucket(1000, burst=500, now=0.0)
    assert b.reserve(500, now=0.0) == 0.0
    assert b.reserve(250, now=0.0) == pytest.approx(0.25)
    assert b.reserve(100, now=1.0) == 0.0  # refilled (capped at the burst)


def test_retention_warnings():
    p = RetentionPolicy(max_bytes=1000)
    assert retention_warnings(p, used_bytes=700, backlog=5) == ()
    (w,) = retention_warnings(p, used_bytes=850, backlog=5)
    assert "85%" in w and "5 unsynced records are kept" in w
    (w,) = retention_warnings(p, used_bytes=1200, backlog=0)
    assert "limit reached" in w
    assert retention_warnings(RetentionPolicy(), used_bytes=10**12, backlog=1) == ()

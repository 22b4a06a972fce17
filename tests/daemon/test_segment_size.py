"""The daemon opens the ledger with segments small enough for sync retention to bound flash."""

from __future__ import annotations

import pytest

from kestrel.daemon.config import parse_device_config
from kestrel.daemon.main import _segment_size, load_config


def _cfg(max_bytes: int):
    text = f"version: 1\nmqtt: {{host: localhost}}\nsync: {{retention: {{max_bytes: {max_bytes}, on_full: drop-synced}}}}\n"
    return parse_device_config(text, source="device.yaml")


@pytest.mark.parametrize("max_bytes, expected", [
    (16_000_000, 1_000_000),  # a sixteenth of the bound
    (100_000, 64 * 1024),  # never below 64 KiB
    (1 << 40, 64 << 20),  # never above the default 64 MiB
])
def test_segment_size_follows_retention_bound(max_bytes, expected):
    assert _segment_size(_cfg(max_bytes)) == {"max_segment_bytes": expected}


def test_no_retention_keeps_the_ledger_default():
    assert _segment_size(load_config(None)) == {}

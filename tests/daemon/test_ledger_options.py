"""The daemon opens the ledger with the config's commit and checkpoint pacing, and with segments
small enough for sync retention to bound flash."""

from __future__ import annotations

import pytest

from kestrel.daemon.config import parse_device_config
from kestrel.daemon.main import _ledger_options, load_config
from kestrel.errors import ConfigError


def _cfg(max_bytes: int):
    text = (
        f"version: 1\nmqtt: {{host: localhost}}\n"
        f"sync: {{retention: {{max_bytes: {max_bytes}, on_full: drop-synced}}}}\n"
    )
    return parse_device_config(text, source="device.yaml")


@pytest.mark.parametrize(
    "max_bytes, expected",
    [
        (16_000_000, 1_000_000),  # a sixteenth of the bound
        (100_000, 64 * 1024),  # never below 64 KiB
        (1 << 40, 64 << 20),  # never above the default 64 MiB
    ],
)
def test_segment_size_follows_retention_bound(max_bytes, expected):
    assert _ledger_options(_cfg(max_bytes))["max_segment_bytes"] == expected


def test_defaults_keep_the_ledger_defaults():
    assert _ledger_options(load_config(None)) == {"max_batch_delay_ms": 5.0, "checkpoint_interval_ms": 50.0}


def test_audit_section_paces_commits_and_checkpoints():
    cfg = parse_device_config(
        "version: 1\naudit: {commit_delay_ms: 2, checkpoint_interval_ms: 500}\n", source="device.yaml"
    )
    assert _ledger_options(cfg) == {"max_batch_delay_ms": 2.0, "checkpoint_interval_ms": 500.0}


@pytest.mark.parametrize(
    "section, key, words",
    [
        ("{checkpoint_interval_ms: 0}", "audit.checkpoint_interval_ms", "below the minimum"),
        ("{commit_delay_ms: soon}", "audit.commit_delay_ms", "expected a number"),
        ("{commit_delay_ms: 5000}", "audit.commit_delay_ms", "above the maximum"),
    ],
)
def test_bad_pacing_is_a_config_error(section, key, words):
    with pytest.raises(ConfigError) as err:
        parse_device_config(f"version: 1\naudit: {section}\n", source="device.yaml")
    assert err.value.key == key and words in str(err.value) and "device.yaml:2:" in str(err.value)

"""The device config's ``sync:`` section and ``mqtt.session_expiry``."""

from __future__ import annotations

import pytest

from kestrel.daemon.config import parse_device_config
from kestrel.errors import ConfigError

MQTT = "version: 1\nmqtt: {host: broker, session_expiry: 172800}\n"


def test_sync_section_and_session_expiry_parse():
    cfg = parse_device_config(MQTT + "sync:\n  bandwidth: 2048\n  retention: {max_bytes: 1000000}\n")
    assert cfg.mqtt is not None and cfg.mqtt.session_expiry_s == 172800
    assert cfg.sync.bandwidth == 2048.0 and cfg.sync.retention.max_bytes == 1000000
    default = parse_device_config("version: 1\nmqtt: {host: broker}\n")
    assert default.mqtt.session_expiry_s == 7 * 86400 and default.sync.enabled


@pytest.mark.parametrize(
    "text, where, what",
    [
        (MQTT + "sync:\n  batch_records: 0\n", "device.yaml:4:3, key 'sync.batch_records'", "between"),
        (MQTT + "sync:\n  colour: blue\n", "device.yaml:4:3, key 'sync'", "unknown key"),
        (MQTT + "sync: [1, 2]\n", "device.yaml:3:7, key 'sync'", "mapping"),
        ("version: 1\nmqtt: {host: b, session_expiry: -5}\n", "device.yaml:2:33, key 'mqtt.session_expiry'", "minimum"),
    ],
)
def test_bad_sync_config_names_file_line_and_key(text, where, what):
    with pytest.raises(ConfigError) as err:
        parse_device_config(text, source="device.yaml")
    assert str(err.value).startswith(where) and what in str(err.value)


def test_agent_send_may_be_a_trigger_action():
    cfg = parse_device_config(
        MQTT
        + """
sensors:
  door: {type: gpio, pin: GPIO17}
triggers:
  - when: "door == 1"
    action: agent.send
    args: {to: "did:key:z6Mkexample", body: {door: open}}
"""
    )
    assert cfg.triggers[0].action == "agent.send"


def test_sync_batches_are_cut_to_fit_a_small_bridge_limit():
    from kestrel.daemon.links import fit_batches

    cfg = parse_device_config(MQTT + "sync: {batch_bytes: 49152}\n").sync
    assert fit_batches(cfg, 65536) is cfg
    assert fit_batches(cfg, 8192).batch_bytes == 8192 - 1024
    assert fit_batches(cfg, 1024).batch_bytes == 1024  # the sync's own minimum

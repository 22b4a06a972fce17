"""Fixtures for the sync tests: a paho publisher (a real MQTT client) and waiting helpers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.wait import wait_until  # noqa: F401 (the sync tests import it from here)


class Publisher:
    """A plain paho MQTT 5 client publishing at QoS 1 and waiting for each PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto):
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A directory mosquitto can persist into even when it drops root privileges to its own user.

    tests/fixtures/mosquitto.py puts persistence under pytest's tmp_path, whose parents are 0700
    root; mosquitto started as root switches to the ``mosquitto`` user and then silently cannot
    write mosquitto.db, so a restart loses every session and queued message.
    """
    d = Path(tempfile.mkdtemp(prefix="kestrel-mosquitto-", dir="/tmp"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def collector(mosquitto, tmp_path):
    """A collector service on the test broker, storing into a fresh SQLite database."""
    from kestrel.sync.collector.service import CollectorService
    from kestrel.sync.collector.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "collector.db")
    svc = CollectorService(store, host=mosquitto.host, port=mosquitto.port, client_id="test-collector")
    svc.start()
    assert svc.subscribed.wait(20), "the collector did not subscribe"
    yield svc
    svc.stop()
    store.close()

"""The MQTT bridge turns Nagle's algorithm off on its broker connection: a small packet written
while the previous one is unacknowledged must not wait for the broker's delayed ACK (~40 ms)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kestrel.io.mqtt import MqttBridge

pytestmark = pytest.mark.mosquitto


def test_bridge_socket_has_tcp_nodelay(mosquitto):
    async def go() -> int:
        bridge = MqttBridge(mosquitto.host, mosquitto.port, agent_id="did:key:z6Mknodelay", reconnect_initial=0.05)
        await bridge.start()
        try:
            assert await bridge.wait_connected(10)
            sock = bridge._client.socket()
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            await bridge.aclose()

    assert asyncio.run(go()) != 0

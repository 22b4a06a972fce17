"""Serial sensors and actuators over real pty pairs: garbage, overruns, a device that comes and goes."""

from __future__ import annotations

import os
import select
import tty

from kestrel.io.framing import nmea_sentence
from kestrel.sdk import Client

from .conftest import in_thread, running, until

POLICY = "actions: [gpio.write, serial.write]\n"


def _config(port: str, *, actuator_port: str | None = None) -> str:
    act = (
        f"""
      display: {{type: serial, port: "{actuator_port}", baud: 115200, framing: line}}"""
        if actuator_port
        else ""
    )
    return f"""
    version: 1
    sensors:
      gps: {{type: serial, port: "{port}", baud: 9600, parity: none, framing: line, format: nmea, max_frame: 82}}
    actuators:
      lamp: {{type: gpio, pin: GPIO27}}{act}
    triggers:
      - name: fix
        when: "gps.type == 'GPGGA' and gps.fields[5] != '0'"
        action: gpio.write
        args: {{actuator: lamp, value: 1}}
    """


def _pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


async def test_garbage_and_overruns_are_counted_and_good_sentences_still_trigger(agent, pty_pair, caplog):
    caplog.set_level("WARNING", logger="kestrel.io.serial")
    async with running(agent, _config(pty_pair.slave_path), policy=POLICY) as d:
        await until(lambda: d.hardware.ports[pty_pair.slave_path].health.state == "connected", what="port open")
        junk = bytes(range(256)) + b"\n" + b"A" * 500 + b"\n"  # binary garbage and an over-long line
        bad_sum = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*00\r\n"
        os.write(pty_pair.master_fd, junk + bad_sum)
        os.write(pty_pair.master_fd, nmea_sentence("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
        await until(lambda: d.hardware.outputs["lamp"].value == 1, what="trigger from the good sentence")
        info = d.hardware.describe()["gps"]
        assert info["garbage_bytes"] > 0 and info["overruns"] >= 1 and info["bad_checksums"] == 1
        logged = [r.getMessage() for r in caplog.records if "dropped bad input" in r.getMessage()]
        assert logged and pty_pair.slave_path in logged[0] and "garbage bytes" in logged[0]  # counted and logged
        assert d.values["gps"]["type"] == "GPGGA" and d.values["gps"]["fields"][0] == "123519"
        st = await in_thread(Client(agent.state).status)
        assert st["health"] == "ok" and st["sensors"]["gps"]["overruns"] >= 1


async def test_sensor_device_disappears_and_comes_back(agent, tmp_path):
    m1, s1, path1 = _pty()
    link = tmp_path / "ttyGPS"
    link.symlink_to(path1)
    m2 = s2 = -1
    try:
        async with running(agent, _config(str(link)), policy=POLICY) as d:
            port = d.hardware.ports[str(link)]
            await until(lambda: port.health.state == "connected", what="connected")
            os.write(m1, nmea_sentence("GPGSV,1,1,00"))
            await until(lambda: (d.values.get("gps") or {}).get("type") == "GPGSV", what="first reading")
            # unplug: the device node goes away and the line hangs up
            link.unlink()
            os.close(m1)
            os.close(s1)
            m1 = s1 = -1
            await until(lambda: port.health.state == "reconnecting", what="reconnecting")
            await until(lambda: d.hardware.sensor_state["gps"] == "unavailable", what="fault state")
            assert d.hardware.describe()["gps"]["state"] == "unavailable"  # the ledger's word, not the port's
            assert d.unhealthy() is None  # a missing sensor is being retried: the daemon itself is fine
            # plug back in (a new device node at the same path)
            m2, s2, path2 = _pty()
            link.symlink_to(path2)
            await until(lambda: port.health.state == "connected", timeout=15, what="reconnected")
            os.write(m2, nmea_sentence("GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E"))
            await until(lambda: (d.values.get("gps") or {}).get("type") == "GPRMC", what="reading after return")
            assert d.hardware.sensor_state["gps"] == "ok"
        faults = agent.kinds("sensor.fault")
        gps = [f for f in faults if f["sensor"] == "gps"]
        assert [f["state"] for f in gps][:2] == ["unavailable", "ok"]
        assert gps[0]["error"] and "error" not in gps[1]  # the ok record does not carry the old error
    finally:
        for fd in (m1, s1, m2, s2):
            if fd >= 0:
                os.close(fd)


async def test_serial_write_action_reaches_the_device(agent, pty_pair, tmp_path):
    m_in, s_in, path_in = _pty()
    try:
        cfg = _config(path_in, actuator_port=pty_pair.slave_path)
        async with running(agent, cfg, policy=POLICY) as d:
            await until(lambda: d.hardware.ports[pty_pair.slave_path].health.state == "connected", what="open")
            r = await d.control_call("serial.write", {"actuator": "display", "data": "HELLO 42"}, source="test")
            assert r["bytes"] == 9

            def read() -> bytes:
                ready, _, _ = select.select([pty_pair.master_fd], [], [], 5)
                return os.read(pty_pair.master_fd, 100) if ready else b""

            assert await in_thread(read) == b"HELLO 42\n"
        res = [r for r in agent.kinds("action.result") if r["action"] == "serial.write"]
        assert res and res[0]["ok"] and res[0]["result"]["bytes"] == 9
    finally:
        os.close(m_in)
        os.close(s_in)

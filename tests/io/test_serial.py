"""SerialPort against real pseudo-terminals: frames, garbage, writes, device loss and return."""

from __future__ import annotations

import asyncio
import os
import tty

import pytest

from kestrel.errors import ConfigError
from kestrel.io.errors import SerialError
from kestrel.io.framing import LengthPrefixedFraming, LineFraming, encode_frame, nmea_sentence
from kestrel.io.serial import SerialPort
from tests.fixtures.wait import until

GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


async def _frame(port: SerialPort, timeout: float = 3.0):
    return await asyncio.wait_for(port.read_frame(), timeout)


def _new_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


async def test_nmea_lines_with_garbage_and_bad_checksums(pty_pair):
    async with SerialPort(pty_pair.slave_path, baudrate=4800, framing=LineFraming(nmea_checksum=True)) as port:
        await until(lambda: port.health.state == "connected")
        good = nmea_sentence(GGA)
        os.write(pty_pair.master_fd, b"\xde\xad" + good.replace(b"*47", b"*00") + b"noise\n" + good)
        frame = await _frame(port)
        assert frame.data == good.rstrip(b"\r\n") and frame.timestamp_ns > 0
        h = port.health
        assert (h.frames, h.bad_checksums, h.garbage_bytes) == (1, 1, 2 + 5)
    assert port.health.state == "closed"


async def test_binary_frames_with_crc_and_parity(pty_pair):
    f = LengthPrefixedFraming(length_bytes=1, crc="crc16", sync=b"\xa5", max_frame=32)
    async with SerialPort(pty_pair.slave_path, baudrate=115200, parity="E", framing=f) as port:
        await until(lambda: port.health.state == "connected")
        bad = bytearray(encode_frame(f, b"bad"))
        bad[-1] ^= 0xFF
        os.write(pty_pair.master_fd, bytes(bad) + b"\x00\x01" + encode_frame(f, b"\x01\x02\x03"))
        assert (await _frame(port)).data == b"\x01\x02\x03"
        assert port.health.bad_checksums == 1


async def test_overrun_flood_keeps_memory_bounded_and_recovers(pty_pair):
    async with SerialPort(pty_pair.slave_path, framing=LineFraming(max_line=128)) as port:
        await until(lambda: port.health.state == "connected")
        blob = b"Z" * 65536
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, os.write, pty_pair.master_fd, blob)
        await until(lambda: port.health.garbage_bytes >= 60000)
        assert len(port._framer._buf) <= 128
        os.write(pty_pair.master_fd, b"\nhello\n")
        assert (await _frame(port)).data == b"hello"
        assert port.health.overruns == 1


async def test_slow_consumer_drops_oldest_frames(pty_pair):
    async with SerialPort(pty_pair.slave_path, queue_size=4) as port:
        await until(lambda: port.health.state == "connected")
        os.write(pty_pair.master_fd, b"".join(b"line %d\n" % i for i in range(20)))
        await until(lambda: port.health.frames == 20)
        assert port.health.dropped == 16
        assert (await _frame(port)).data == b"line 16"


async def test_write_reaches_the_device(pty_pair):
    async with SerialPort(pty_pair.slave_path, baudrate=19200) as port:
        await until(lambda: port.health.state == "connected")
        await port.write(b"RELAY 1 ON\r\n")
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, os.read, pty_pair.master_fd, 100)
        assert got == b"RELAY 1 ON\r\n"


async def test_device_disappears_and_comes_back(tmp_path):
    link = tmp_path / "ttyGPS"
    m1, s1, p1 = _new_pty()
    os.symlink(p1, link)
    states: list[str] = []
    port = SerialPort(
        str(link), reconnect_initial=0.05, reconnect_max=0.2, on_state_change=lambda h: states.append(h.state)
    )
    await port.open()
    try:
        await until(lambda: port.health.state == "connected")
        os.write(m1, b"before\n")
        assert (await _frame(port)).data == b"before"
        # unplug: the device side goes away and the node disappears
        os.close(m1)
        os.unlink(link)
        await until(lambda: port.health.state == "reconnecting")
        assert port.health.last_error
        with pytest.raises(SerialError, match="not connected"):
            await port.write(b"x")
        os.close(s1)
        # plug back in: a new device under the same name
        m2, s2, p2 = _new_pty()
        os.symlink(p2, link)
        await until(lambda: port.health.state == "connected")
        os.write(m2, b"after\n")
        assert (await _frame(port)).data == b"after"
        assert port.health.reconnects == 1
        assert states[:3] == ["connected", "reconnecting", "connected"]
    finally:
        await port.close()
    os.close(m2)
    os.close(s2)


async def test_missing_device_at_start_is_not_an_error(tmp_path):
    path = tmp_path / "ttyUSB9"
    async with SerialPort(str(path), reconnect_initial=0.05, reconnect_max=0.1) as port:
        await until(lambda: port.health.last_error is not None)  # the first attempt failed
        assert port.health.state == "connecting" and "ttyUSB9" in port.health.last_error
        m, s, p = _new_pty()
        os.symlink(p, path)
        await until(lambda: port.health.state == "connected")
        assert port.health.reconnects == 0
    os.close(m)
    os.close(s)


async def test_iteration_ends_when_closed(pty_pair):
    port = SerialPort(pty_pair.slave_path)
    await port.open()
    await until(lambda: port.health.state == "connected")
    os.write(pty_pair.master_fd, b"a\nb\n")
    await until(lambda: port.health.frames == 2)

    got: list[bytes] = []

    async def consume():
        async for f in port:
            got.append(f.data)
        return got

    task = asyncio.ensure_future(consume())
    await until(lambda: len(got) == 2, what="both frames consumed")  # the consumer now waits for a third
    await port.close()
    assert await asyncio.wait_for(task, 2) == [b"a", b"b"]
    with pytest.raises(SerialError, match="closed"):
        await port.read_frame()


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"baudrate": 0}, "baudrate"),
        ({"parity": "X"}, "parity"),
        ({"bytesize": 9}, "bytesize"),
        ({"stopbits": 3}, "stopbits"),
        ({"baudrate": "fast"}, "baudrate"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=f"invalid serial {key}") as ei:
        SerialPort("/dev/null", **kwargs)
    assert ei.value.key == key and ei.value.exit_code == 2


async def test_device_held_by_another_port_is_reported_not_raised(pty_pair):
    async with SerialPort(pty_pair.slave_path) as first:
        await until(lambda: first.health.state == "connected")
        async with SerialPort(pty_pair.slave_path, reconnect_initial=0.05, reconnect_max=0.1) as second:
            await until(lambda: second.health.last_error is not None)
            assert second.health.state == "connecting" and not second.health.healthy
            assert first.health.healthy


async def test_bad_input_is_logged_once_then_summarised(pty_pair, caplog):
    """docs/io.md: counted *and logged*; a flood of garbage does not flood the log."""
    caplog.set_level("WARNING", logger="kestrel.io.serial")
    async with SerialPort(pty_pair.slave_path, framing=LineFraming(nmea_checksum=True)) as port:
        await until(lambda: port.health.state == "connected")
        good = nmea_sentence(GGA)
        for i in range(20):  # one at a time: each bad line read on its own, a flood spread over many reads
            os.write(pty_pair.master_fd, b"\xde\xad" + good.replace(b"*47", b"*00"))
            await until(lambda i=i: port.health.bad_checksums == i + 1, what=f"bad line {i + 1} counted")
        os.write(pty_pair.master_fd, good)
        await until(lambda: port.health.frames == 1)
    logged = [r.getMessage() for r in caplog.records if "dropped bad input" in r.getMessage()]
    assert len(logged) == 1 and "bad checksum" in logged[0] and pty_pair.slave_path in logged[0]
    assert port.health.bad_checksums == 20

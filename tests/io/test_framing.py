"""The pure serial framers: good frames, garbage, overruns, bad checksums, resync, bounded memory."""

from __future__ import annotations

import random

import pytest

from kestrel.errors import ConfigError
from kestrel.io.errors import PayloadTooLarge
from kestrel.io.framing import (
    LengthPrefixedFraming,
    LineFraming,
    encode_frame,
    make_framer,
    nmea_checksum,
    nmea_sentence,
)

GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"


def test_nmea_checksum_known_value():
    # the classic example sentence from the NMEA 0183 literature
    assert nmea_sentence(GGA) == b"$" + GGA.encode() + b"*47\r\n"
    assert nmea_checksum(b"") == 0


def test_lines_split_across_reads_and_crlf():
    fr = make_framer(LineFraming())
    assert fr.feed(b"hel") == []
    assert fr.feed(b"lo\r\nwor") == [b"hello"]
    assert fr.feed(b"ld\n\n") == [b"world"]
    assert fr.stats.frames == 2


def test_nmea_good_bad_and_garbage_prefix():
    fr = make_framer(LineFraming(nmea_checksum=True))
    good = nmea_sentence(GGA)
    bad = good.replace(b"*47", b"*48")
    out = fr.feed(b"\x00\xff" + good + bad + b"no dollar here\n" + b"$GPXXX,1*ZZ\n" + b"$GPXXX,1\n" + good)
    assert out == [good.rstrip(b"\r\n"), good.rstrip(b"\r\n")]
    assert fr.stats.bad_checksums == 3  # wrong sum, non-hex sum, missing sum
    assert fr.stats.garbage_bytes == 2 + len(b"no dollar here")


def test_overlong_line_is_dropped_then_resyncs():
    fr = make_framer(LineFraming(max_line=32))
    assert fr.feed(b"x" * 100) == []
    assert fr.feed(b"y" * 100) == []
    assert len(fr._buf) <= 32
    assert fr.feed(b"tail\nok\n") == [b"ok"]
    assert fr.stats.overruns == 1
    assert fr.stats.garbage_bytes == 205


def test_overlong_line_inside_one_read():
    fr = make_framer(LineFraming(max_line=8))
    assert fr.feed(b"0123456789abc\nshort\n") == [b"short"]
    assert fr.stats.overruns == 1


@pytest.mark.parametrize("crc", [None, "crc16", "crc32"])
@pytest.mark.parametrize("length_bytes", [1, 2])
def test_length_prefixed_roundtrip(crc, length_bytes):
    f = LengthPrefixedFraming(length_bytes=length_bytes, crc=crc, max_frame=200)
    payloads = [bytes([i]) * (i + 1) for i in range(50)]
    stream = b"".join(encode_frame(f, p) for p in payloads)
    fr = make_framer(f)
    out = []
    for i in range(0, len(stream), 7):  # arbitrary read boundaries
        out += fr.feed(stream[i : i + 7])
    assert out == payloads and fr.stats.frames == 50


def test_crc_resync_after_corruption_and_garbage():
    f = LengthPrefixedFraming(length_bytes=2, crc="crc16", sync=b"\xaa\x55", max_frame=64)
    a, b, c = encode_frame(f, b"alpha"), encode_frame(f, b"bravo"), encode_frame(f, b"charlie")
    corrupt = bytearray(b)
    corrupt[5] ^= 0x01
    fr = make_framer(f)
    out = fr.feed(b"\x13\x37garbage" + a + bytes(corrupt) + b"\xaa\x55\xff\xff" + c)
    assert out == [b"alpha", b"charlie"]
    assert fr.stats.bad_checksums == 1
    assert fr.stats.overruns == 1  # the bogus 0xffff length after a sync marker
    assert fr.stats.garbage_bytes > 0


def test_crc32_detects_flip():
    f = LengthPrefixedFraming(length_bytes=1, crc="crc32", max_frame=100)
    frame = bytearray(encode_frame(f, b"hello world"))
    frame[3] ^= 0x80
    fr = make_framer(f)
    good = [b"next %d" % i for i in range(10)]
    out = fr.feed(bytes(frame) + b"".join(encode_frame(f, p) for p in good))
    # without a sync marker a false length may swallow a frame or two, then it resyncs
    assert len(out) >= 8 and out == good[-len(out) :]
    assert fr.stats.bad_checksums >= 1


def test_length_over_max_is_an_overrun_and_memory_stays_bounded():
    f = LengthPrefixedFraming(length_bytes=2, crc="crc16", max_frame=100)
    fr = make_framer(f)
    fr.feed(b"\xff\xff" + b"\x00" * 10_000)
    assert fr.stats.overruns >= 1
    assert len(fr._buf) <= 2 + 100 + 2
    assert fr.feed(encode_frame(f, b"ok")) == [b"ok"]


def test_framing_options_are_validated():
    with pytest.raises(ConfigError, match="length_bytes"):
        LengthPrefixedFraming(length_bytes=3)
    with pytest.raises(ConfigError, match="max_frame"):
        LengthPrefixedFraming(length_bytes=1, max_frame=300)
    with pytest.raises(ConfigError, match="crc"):
        LengthPrefixedFraming(crc="md5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LineFraming(max_line=1)
    with pytest.raises(PayloadTooLarge):
        encode_frame(LengthPrefixedFraming(max_frame=10), b"x" * 11)


def _fuzz(seconds_budget_iterations: int, seed: int) -> None:
    rng = random.Random(seed)
    framings = [
        LineFraming(max_line=64, nmea_checksum=True),
        LineFraming(max_line=64),
        LengthPrefixedFraming(length_bytes=1, crc="crc16", sync=b"\x7e", max_frame=60),
        LengthPrefixedFraming(length_bytes=2, crc=None, max_frame=300),
    ]
    for f in framings:
        fr = make_framer(f)
        limit = (f.max_line if isinstance(f, LineFraming) else f.max_frame + 8) + 512
        for _ in range(seconds_budget_iterations):
            chunk = rng.randbytes(rng.randint(0, 512))
            for frame in fr.feed(chunk):
                assert len(frame) <= (f.max_line if isinstance(f, LineFraming) else f.max_frame)
            assert len(fr._buf) <= limit


def test_fuzz_random_bytes_bounded():
    _fuzz(300, seed=1)


@pytest.mark.slow
def test_fuzz_random_bytes_long():
    _fuzz(50_000, seed=2)

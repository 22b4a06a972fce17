"""Truncated, corrupt and crafted memory files: a clear error, never a crash of the process."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import textwrap

import pytest

from kestrel.memory import IndexParams, MemoryFormatError, VectorMemory
from kestrel.memory.format import HEADER_SIZE, Header, decode_file, encode_file, index_name
from tests.memory.data import embedding_like

HNSW_HEADER = 96


def saved(tmp_path, n=200, dim=8):
    mem = VectorMemory.create(tmp_path / "mem", IndexParams(dim=dim, capacity=400, M=8, ef_construction=40))
    mem.add_many(embedding_like(n, dim=dim), [{"i": i} for i in range(n)])
    mem.save()
    mem.close()
    kmem = tmp_path / "mem" / "memory.kmem"
    header, meta = decode_file(kmem.read_bytes())
    return kmem, tmp_path / "mem" / index_name(header.generation), header, meta


def reseal(kmem, header, meta, index_bytes):
    """What an attacker would do: fix up the checksums so only the structure checks remain."""
    header = Header(
        **{**header.__dict__, "index_size": len(index_bytes), "index_sha256": hashlib.sha256(index_bytes).digest()}
    )
    kmem.write_bytes(encode_file(header, meta))


def test_header_roundtrip():
    h = Header(
        dim=384,
        space="cosine",
        count=1,
        max_elements=10,
        M=16,
        ef_construction=200,
        ef=77,
        generation=5,
        next_label=9,
        index_size=123,
        index_sha256=b"\x01" * 32,
    )
    data = encode_file(h, {"entries": {4: {"text": "x"}}, "info": {}})
    h2, meta = decode_file(data)
    assert h2 == h and meta["entries"] == {4: {"text": "x"}}


@pytest.mark.parametrize("cut", [0, 7, HEADER_SIZE - 1, HEADER_SIZE + 3])
def test_truncated_header_file(tmp_path, cut):
    kmem, *_ = saved(tmp_path)
    kmem.write_bytes(kmem.read_bytes()[:cut])
    with pytest.raises(MemoryFormatError, match="truncated|does not match"):
        VectorMemory.open(tmp_path / "mem")


@pytest.mark.parametrize("offset", [0, 8, 12, 40, 120, HEADER_SIZE + 2])
def test_flipped_bit_in_header_file(tmp_path, offset):
    kmem, *_ = saved(tmp_path)
    data = bytearray(kmem.read_bytes())
    data[offset] ^= 0x10
    kmem.write_bytes(bytes(data))
    with pytest.raises(MemoryFormatError):
        VectorMemory.open(tmp_path / "mem")


def test_truncated_or_flipped_index_file(tmp_path):
    kmem, index, header, meta = saved(tmp_path)
    good = index.read_bytes()
    index.write_bytes(good[: len(good) // 2])
    with pytest.raises(MemoryFormatError, match="size or checksum"):
        VectorMemory.open(tmp_path / "mem")
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 1
    index.write_bytes(bytes(flipped))
    with pytest.raises(MemoryFormatError, match="size or checksum"):
        VectorMemory.open(tmp_path / "mem")
    index.unlink()
    with pytest.raises(MemoryFormatError, match="missing"):
        VectorMemory.open(tmp_path / "mem")


def _level0(header, dim):
    maxm0 = 2 * header.M
    return 4 + 4 * maxm0 + 4 * dim + 8, maxm0


def craft(kind, data, header, dim):
    data = bytearray(data)
    sdpe, maxm0 = _level0(header, dim)
    if kind == "neighbour out of range":
        struct.pack_into("<I", data, HNSW_HEADER + 5 * sdpe + 4, 10_000_000)  # element 5, first link
        struct.pack_into(
            "<H", data, HNSW_HEADER + 5 * sdpe, max(1, struct.unpack_from("<H", data, HNSW_HEADER + 5 * sdpe)[0])
        )
    elif kind == "link count too large":
        struct.pack_into("<H", data, HNSW_HEADER + 3 * sdpe, maxm0 + 5)
    elif kind == "entry point out of range":
        struct.pack_into("<I", data, 52, 999_999)
    elif kind == "element count too large":
        struct.pack_into("<Q", data, 16, 10**12)
    elif kind == "wrong dimension":
        struct.pack_into("<Q", data, 24, sdpe + 4)
    elif kind == "trailing bytes":
        data += b"\0" * 8
    elif kind == "duplicate labels":
        struct.pack_into("<Q", data, HNSW_HEADER + 1 * sdpe + sdpe - 8, 0)
    return bytes(data)


@pytest.mark.parametrize(
    "kind",
    [
        "neighbour out of range",
        "link count too large",
        "entry point out of range",
        "element count too large",
        "wrong dimension",
        "trailing bytes",
        "duplicate labels",
    ],
)
def test_crafted_index_with_valid_checksums_is_refused(tmp_path, kind):
    kmem, index, header, meta = saved(tmp_path)
    bad = craft(kind, index.read_bytes(), header, 8)
    index.write_bytes(bad)
    reseal(kmem, header, meta, bad)
    with pytest.raises(MemoryFormatError, match="corrupt or crafted"):
        VectorMemory.open(tmp_path / "mem")


def test_metadata_that_disagrees_with_the_index_is_refused(tmp_path):
    kmem, index, header, meta = saved(tmp_path)
    meta["entries"][12345] = meta["entries"].pop(0)
    kmem.write_bytes(encode_file(header, meta))
    with pytest.raises(MemoryFormatError, match="live labels"):
        VectorMemory.open(tmp_path / "mem")


def test_crafted_file_never_crashes_the_process(tmp_path):
    """The same crafted file fed to hnswlib directly would read out of bounds; through the store it
    is an error with exit status 2 from a process that is still alive to report it."""
    kmem, index, header, meta = saved(tmp_path)
    bad = craft("neighbour out of range", index.read_bytes(), header, 8)
    index.write_bytes(bad)
    reseal(kmem, header, meta, bad)
    code = textwrap.dedent(f"""
        import sys
        from kestrel.memory import VectorMemory, MemoryFormatError
        try:
            VectorMemory.open({str(tmp_path / "mem")!r})
        except MemoryFormatError as exc:
            print("refused:", exc.message); sys.exit(2)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "refused:" in proc.stdout and "Traceback" not in proc.stderr


def test_cli_reports_a_corrupt_memory_without_traceback(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    mem = VectorMemory.create(state / "memory", IndexParams(dim=8, capacity=10))
    mem.close()
    kmem = state / "memory" / "memory.kmem"
    kmem.write_bytes(kmem.read_bytes()[:50])
    proc = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "memory", "info", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "truncated" in proc.stderr and "Traceback" not in proc.stderr

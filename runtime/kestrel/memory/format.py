"""The memory file format: the pure core (bytes in, typed values out; docs/memory-format.md).

``memory.kmem`` = a 144-byte header + msgpack metadata. The header names the hnswlib index
file of the same generation (``index-<generation as 16 hex digits>.hnsw``) and carries its size
and sha256. :func:`check_hnsw` walks that file's structure before hnswlib ever sees it, so a
crafted file (neighbour ids out of range, wrong sizes) is refused instead of crashing the process.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import DataError

__all__ = [
    "MAGIC",
    "VERSION",
    "SPACES",
    "HEADER_SIZE",
    "MemoryFormatError",
    "Header",
    "encode_file",
    "decode_file",
    "index_name",
    "HnswInfo",
    "check_hnsw",
]

MAGIC = b"KESTMEM\x00"
VERSION = 1
SPACES = ("l2", "ip", "cosine")
_FIELDS = struct.Struct("<8sHBBIQQIIIIQQQ32sQ")  # 112 bytes, then sha256 (32) over fields + meta
HEADER_SIZE = _FIELDS.size + 32
MAX_DIM = 65536
MAX_M = 512


class MemoryFormatError(DataError):
    """A memory file is truncated, corrupt, crafted, or of another version."""


@dataclass(frozen=True)
class Header:
    dim: int
    space: str
    count: int  # live entries
    max_elements: int
    M: int
    ef_construction: int
    ef: int
    generation: int
    next_label: int
    index_size: int
    index_sha256: bytes


def index_name(generation: int) -> str:
    return f"index-{generation:016x}.hnsw"


def encode_file(header: Header, meta: dict[str, Any]) -> bytes:
    """Header + msgpack metadata, checksummed."""
    meta_bytes = msgpack.packb(meta, use_bin_type=True)
    fields = _FIELDS.pack(
        MAGIC,
        VERSION,
        SPACES.index(header.space),
        0,
        header.dim,
        header.count,
        header.max_elements,
        header.M,
        header.ef_construction,
        header.ef,
        0,
        header.generation,
        header.next_label,
        header.index_size,
        header.index_sha256,
        len(meta_bytes),
    )
    return fields + hashlib.sha256(fields + meta_bytes).digest() + meta_bytes


def decode_file(data: bytes, *, source: str = "<memory>") -> tuple[Header, dict[str, Any]]:
    """Parse and check a ``memory.kmem`` file; raise :class:`MemoryFormatError` on any defect."""
    hint = "restore the memory directory from a backup, or move it away to start an empty memory"
    if len(data) < HEADER_SIZE:
        raise MemoryFormatError(f"{source}: truncated ({len(data)} bytes, header needs {HEADER_SIZE})", hint=hint)
    (
        magic,
        version,
        space,
        flags,
        dim,
        count,
        max_elements,
        M,
        efc,
        ef,
        _res,
        gen,
        next_label,
        index_size,
        index_sha,
        meta_size,
    ) = _FIELDS.unpack_from(data)
    if magic != MAGIC:
        raise MemoryFormatError(f"{source}: not a Kestrel memory file (bad magic)", hint=hint)
    if version != VERSION:
        raise MemoryFormatError(f"{source}: format version {version} is not supported (this runtime reads {VERSION})")
    if len(data) != HEADER_SIZE + meta_size:
        raise MemoryFormatError(
            f"{source}: size {len(data)} does not match header ({HEADER_SIZE + meta_size})", hint=hint
        )
    meta_bytes = data[HEADER_SIZE:]
    if hashlib.sha256(data[: _FIELDS.size] + meta_bytes).digest() != data[_FIELDS.size : HEADER_SIZE]:
        raise MemoryFormatError(f"{source}: checksum mismatch (the file is corrupt)", hint=hint)
    if space >= len(SPACES) or flags != 0 or not 0 < dim <= MAX_DIM or not 2 <= M <= MAX_M:
        raise MemoryFormatError(f"{source}: header has impossible values (space {space}, dim {dim}, M {M})", hint=hint)
    if count > max_elements or next_label < count or ef < 1 or efc < 1:
        raise MemoryFormatError(f"{source}: header counts are inconsistent", hint=hint)
    try:
        meta = msgpack.unpackb(meta_bytes, raw=False, strict_map_key=False)
    except Exception as exc:
        raise MemoryFormatError(f"{source}: metadata is not valid msgpack ({exc})", hint=hint) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("entries"), dict):
        raise MemoryFormatError(f"{source}: metadata has no entries map", hint=hint)
    if len(meta["entries"]) != count:
        raise MemoryFormatError(
            f"{source}: metadata holds {len(meta['entries'])} entries, header says {count}", hint=hint
        )
    header = Header(
        dim=dim,
        space=SPACES[space],
        count=count,
        max_elements=max_elements,
        M=M,
        ef_construction=efc,
        ef=ef,
        generation=gen,
        next_label=next_label,
        index_size=index_size,
        index_sha256=index_sha,
    )
    return header, meta


@dataclass(frozen=True)
class HnswInfo:
    """What :func:`check_hnsw` found: element count (live and deleted) and the live labels."""

    elements: int
    live_labels: frozenset[int]


_HNSW = struct.Struct("<QQQQQQiIQQQdQ")  # hnswlib 0.8 saveIndex header, 96 bytes


def check_hnsw(buf: Any, header: Header, *, source: str = "<index>") -> HnswInfo:
    """Walk an hnswlib 0.8 index file in ``buf`` (bytes or a uint8 numpy memmap) and check it.

    Checks sizes against ``header`` (dimension, M, capacity), every link count and neighbour id,
    that neighbours on level L exist on level L, and that the entry point is on the top level.
    """
    import numpy as np

    def bad(why: str) -> MemoryFormatError:
        return MemoryFormatError(
            f"{source}: corrupt or crafted hnswlib index ({why})", hint="restore the memory directory from a backup"
        )

    arr = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else buf
    total = int(arr.shape[0])
    if total < _HNSW.size:
        raise bad("truncated header")
    (off0, max_el, cur, sdpe, label_off, data_off, maxlevel, enter, maxM, maxM0, M, mult, _efc) = _HNSW.unpack(
        arr[: _HNSW.size].tobytes()
    )
    dim = header.dim
    if (
        off0 != 0
        or M != header.M
        or maxM != M
        or maxM0 != 2 * M
        or data_off != 4 + 4 * maxM0
        or label_off != data_off + 4 * dim
        or sdpe != label_off + 8
    ):
        raise bad("parameters do not match the memory header")
    if cur > header.max_elements or cur > max_el or not math.isfinite(mult) or not (0 if cur else -1) <= maxlevel <= 64:
        raise bad("element count or level out of range")
    if cur and enter >= cur:
        raise bad("entry point out of range")
    pos = _HNSW.size
    end0 = pos + cur * sdpe
    if total < end0:
        raise bad("truncated level-0 data")
    level0 = arr[pos:end0].reshape(cur, sdpe) if cur else np.zeros((0, sdpe), np.uint8)
    counts = level0[:, 0:2].copy().view(np.uint16).ravel()
    if (counts > maxM0).any():
        raise bad("a level-0 link count exceeds maxM0")
    links = level0[:, 4:data_off].copy().view(np.uint32).reshape(cur, maxM0)
    used = np.arange(maxM0)[None, :] < counts[:, None]
    if (links[used] >= cur).any():
        raise bad("a level-0 neighbour id is out of range")
    deleted = (level0[:, 2] & 1).astype(bool)
    labels = level0[:, label_off:sdpe].copy().view(np.uint64).ravel()
    # upper levels: one uint32 size + size bytes per element, in element order
    slpe = 4 + 4 * maxM
    pos = end0
    levels = np.zeros(cur, dtype=np.int64)
    upper: list[tuple[int, int, int]] = []  # (element, start, nlevels)
    i = 0
    while i < cur:  # runs of level-0-only elements (size 0) are skipped a window at a time
        window = min(cur - i, 128)
        if pos + 4 * window > total:
            raise bad("truncated link lists")
        sizes = arr[pos : pos + 4 * window].view(np.uint32)
        nonzero = np.flatnonzero(sizes)
        if not len(nonzero):
            i += window
            pos += 4 * window
            continue
        skip = int(nonzero[0])
        i += skip
        pos += 4 * skip
        size = int(sizes[skip])
        pos += 4
        if size % slpe or size // slpe > maxlevel or pos + size > total:
            raise bad(f"link list of element {i} has a bad size")
        levels[i] = size // slpe
        upper.append((i, pos, size // slpe))
        pos += size
        i += 1
    if pos != total:
        raise bad("trailing bytes after the link lists")
    if cur and levels[enter] != maxlevel:
        raise bad("entry point is not on the top level")
    if upper:  # every (element, level >= 1) link block, checked at once
        starts = np.array([start + lv * slpe for _, start, nlev in upper for lv in range(nlev)], dtype=np.int64)
        block_level = np.array([lv + 1 for _, _, nlev in upper for lv in range(nlev)], dtype=np.int64)
        blocks = arr[starts[:, None] + np.arange(slpe)[None, :]].view(np.uint32).reshape(len(starts), 1 + maxM)
        n_links = blocks[:, 0] & 0xFFFF
        if (n_links > maxM).any():
            raise bad("an upper-level link count exceeds maxM")
        used_up = np.arange(maxM)[None, :] < n_links[:, None]
        ids = blocks[:, 1:][used_up]
        if (ids >= cur).any():
            raise bad("an upper-level neighbour id is out of range")
        if (levels[ids] < np.repeat(block_level, n_links.astype(np.int64))).any():
            raise bad("an element links to an element missing from that level")
    live = labels[~deleted]
    if len(np.unique(labels)) != cur:
        raise bad("duplicate labels")
    return HnswInfo(elements=cur, live_labels=frozenset(live.tolist()))

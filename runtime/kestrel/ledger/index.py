"""The ledger's persisted index (I/O shell): where each block of records starts, and Merkle subtree roots.

Records are grouped in blocks of ``BLOCK`` (256) by seq. Two append-only files beside the segments:

* ``index.pos``: 8-byte magic, then per block ``b`` 16 bytes: the first seq of the segment holding
  record ``b * BLOCK`` (its file name) and the byte offset in that file of a frame at or before that
  record (and after record ``b * BLOCK - 1``);
* ``index.mmr``: 8-byte magic, then 32-byte hashes in post order over the block roots (a Merkle
  mountain range): the root of block ``b`` (RFC 6962 MTH of its 256 leaves), and after it the root
  of every perfect subtree that block completes. The node covering blocks ``[j * 2^k, (j + 1) * 2^k)``
  is at position ``2L - popcount(L) + k`` for ``L = (j + 1) * 2^k - 1``.

So a record is found with one read and a scan of at most one block, and an inclusion proof needs
one hash per level plus the leaves of at most two blocks: time and memory independent of the
ledger's size. The index is a cache: never fsynced, rebuilt by the writer on every open from the
log it verifies, and checked by its readers (a record at an indexed offset must have the expected
seq; a proof built from it must verify against the signed checkpoint, else the slow path is used).
docs/ledger-format.md, section 3.2.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .merkle import Frontier, node_hash, tree_root

__all__ = [
    "BLOCK",
    "POS_FILE",
    "MMR_FILE",
    "KINDS_FILE",
    "mmr_pos",
    "IndexBuilder",
    "IndexState",
    "IndexReader",
    "save_kinds",
    "load_kinds",
]

BLOCK = 256
POS_FILE = "index.pos"
MMR_FILE = "index.mmr"
KINDS_FILE = "index.kinds"  # msgpack {"size": n, "latest": {kind: seq}}: the newest record of each kind below n
POS_MAGIC = b"KLIDXP\x01\x00"
MMR_MAGIC = b"KLIDXM\x01\x00"
_POS = struct.Struct(">QQ")
_HASH = 32


def mmr_pos(level: int, j: int) -> int:
    """Position (in hashes) of the node covering blocks ``[j * 2^level, (j + 1) * 2^level)``."""
    last = ((j + 1) << level) - 1
    return 2 * last - bin(last).count("1") + level


@dataclass(frozen=True)
class IndexState:
    """An :class:`IndexBuilder` after ``size`` leaves: enough to go on appending to the index files
    without reading the log before ``size`` (a writer resuming, see resume.py)."""

    size: int
    nodes: int  # MMR nodes written
    peaks: tuple[tuple[int, bytes], ...]  # (level, hash) of the MMR's peaks, largest first
    block: tuple[bytes, ...]  # leaves of the block in progress
    skip: int  # leaves of a block straddling a pruned log's base still to skip


class IndexBuilder:
    """Writes a fresh index while a writer walks its log, then keeps appending as it commits.

    ``start(seq, segment, offset)`` when the walk or a commit reaches the first record of a block,
    ``leaves(first_seq, hashes)`` for every leaf in order. Writes go through small buffers to
    temporary files during the walk (``commit()`` renames them), straight to the files after."""

    def __init__(self, ledger_dir: Path, *, first_seq: int = 0, resume: IndexState | None = None) -> None:
        """A fresh index (temporary files) for a log whose first record is ``first_seq``; or, with
        ``resume``, the index files cut back to what that state had written, appended to from there
        (OSError if they hold less than that: see :meth:`resume`)."""
        self.dir = Path(ledger_dir)
        self._tmp = resume is None
        self._pos, self._mmr = self._resumed(resume) if resume is not None else self._fresh()
        start = resume.size if resume is not None else first_seq
        self.next_start = -(-start // BLOCK) * BLOCK if resume is not None else first_seq  # next block start to write
        self.fed = start  # seq of the next leaf a walk hands over (see verify._feed)
        self._block: list[bytes] = list(resume.block) if resume is not None else []  # leaves of the current block
        self._leaf_seq = start  # seq of the next leaf expected
        self._stack: list[tuple[int, bytes]] = list(resume.peaks) if resume is not None else []  # the MMR's peaks
        self._nodes = resume.nodes if resume is not None else 0
        self._skip = resume.skip if resume is not None else 0
        self.usable = True
        if first_seq and resume is None:  # a pruned log: blocks below the base cannot be rebuilt from records
            self._copy_prefix(first_seq)

    def _copy_prefix(self, first_seq: int) -> None:
        """Carry the entries of the blocks below a pruned log's base over from the old index, if it has them."""
        blocks = -(-first_seq // BLOCK)  # blocks that hold a pruned record
        reader = IndexReader.open(self.dir)
        try:
            nodes = 2 * blocks - bin(blocks).count("1")  # MMR nodes after that many block roots
            if reader is None or reader.blocks < blocks or reader.nodes < nodes:
                self.usable = False
            else:
                for b in range(blocks):
                    self._pos.write(reader.pos_entry(b))
                for pos in range(nodes):
                    self._mmr.write(reader.node_at(pos))
                self._nodes = nodes
                self._stack = [(level, reader.node_at(mmr_pos(level, j))) for level, j in _peaks_after(blocks)]
        finally:
            if reader is not None:
                reader.close()
        self.next_start = blocks * BLOCK
        self._leaf_seq = first_seq
        self._skip = blocks * BLOCK - first_seq  # leaves of the block straddling the base: not rebuilt
        if not self.usable:
            self._pos.truncate(0)

    def _fresh(self) -> tuple[BinaryIO, BinaryIO]:
        pos = open(self.dir / (POS_FILE + ".tmp"), "wb", buffering=1 << 16)
        mmr = open(self.dir / (MMR_FILE + ".tmp"), "wb", buffering=1 << 16)
        pos.write(POS_MAGIC)
        mmr.write(MMR_MAGIC)
        return pos, mmr

    def _resumed(self, state: IndexState) -> tuple[BinaryIO, BinaryIO]:
        blocks = -(-state.size // BLOCK)  # block starts below size: their positions were written
        want = (
            (POS_FILE, POS_MAGIC, len(POS_MAGIC) + blocks * _POS.size),
            (MMR_FILE, MMR_MAGIC, len(MMR_MAGIC) + state.nodes * _HASH),
        )
        files: list[BinaryIO] = []
        try:
            for name, magic, length in want:
                fh = open(self.dir / name, "r+b")
                files.append(fh)
                if fh.read(len(magic)) != magic or os.fstat(fh.fileno()).st_size < length:
                    raise OSError(f"{name} holds less than the resume point says")
                fh.truncate(length)
                fh.seek(length)
        except OSError:
            for opened in files:
                opened.close()
            raise
        return files[0], files[1]

    def state(self, size: int) -> IndexState | None:
        """The builder's state once it has been fed the leaves of the first ``size`` records (None if
        the index is not usable)."""
        if not self.usable:
            return None
        return IndexState(size, self._nodes, tuple(self._stack), tuple(self._block), self._skip)

    @classmethod
    def resume(cls, ledger_dir: Path, state: IndexState) -> IndexBuilder | None:
        """Go on appending to the index files from ``state`` (None if they hold less than it says)."""
        try:
            return cls(ledger_dir, resume=state)
        except OSError:
            return None

    def start(self, seq: int, segment: int, offset: int) -> None:
        if seq != self.next_start or not self.usable:
            return
        self._pos.write(_POS.pack(segment, offset))
        if not self._tmp:
            self._pos.flush()  # readers see it at once (no fsync: the index is a cache)
        self.next_start += BLOCK

    def leaves(self, hashes: Sequence[bytes]) -> None:
        if not self.usable:
            return
        if self._skip:
            n = min(self._skip, len(hashes))
            self._skip -= n
            hashes = hashes[n:]
        block = self._block
        for h in hashes:
            block.append(h)
            if len(block) == BLOCK:
                self._add_block(tree_root(block))
                block.clear()

    def extend(self, frontier: Frontier, hashes: Sequence[bytes]) -> None:
        """``frontier.extend(hashes)`` and :meth:`leaves`, hashing each whole block once (its root goes to
        both): the writer's tree and its index cost one pass over the leaves, not two."""
        i, n = 0, len(hashes)
        while i < n:
            if self.usable and not self._skip and not self._block and frontier.size % BLOCK == 0 and n - i >= BLOCK:
                root = tree_root(hashes[i : i + BLOCK])
                frontier.push_subtree(BLOCK, root)
                self._add_block(root)
                i += BLOCK
                continue
            take = n - i if not self.usable else min(n - i, BLOCK - len(self._block) if not self._skip else self._skip)
            chunk = hashes[i : i + take]
            frontier.extend(chunk)
            self.leaves(chunk)
            i += take

    def _add_block(self, root: bytes) -> None:
        out = [root]
        level, h = 0, root
        stack = self._stack
        while stack and stack[-1][0] == level:
            _, left = stack.pop()
            h = node_hash(left, h)
            level += 1
            out.append(h)
        stack.append((level, h))
        self._mmr.write(b"".join(out))
        if not self._tmp:
            self._mmr.flush()
        self._nodes += len(out)

    def commit(self) -> None:
        """Replace the index files with the ones just built; from now on append to them directly."""
        self._pos.flush()
        self._mmr.flush()
        if not self._tmp:  # resumed: appending to the files already
            return
        if not self.usable:  # a pruned log whose old index is gone: no index (readers take the slow path)
            for f, name in ((self._pos, POS_FILE), (self._mmr, MMR_FILE)):
                f.close()
                os.unlink(self.dir / (name + ".tmp"))
                try:
                    os.unlink(self.dir / name)
                except FileNotFoundError:
                    pass
            return
        for name in (POS_FILE, MMR_FILE):
            os.replace(self.dir / (name + ".tmp"), self.dir / name)
        self._tmp = False

    def flush(self) -> None:
        if self.usable and not self._pos.closed:
            self._pos.flush()
            self._mmr.flush()

    def close(self) -> None:
        for f in (self._pos, self._mmr):
            if not f.closed:
                f.close()
        if self._tmp:
            for name in (POS_FILE, MMR_FILE):
                try:
                    os.unlink(self.dir / (name + ".tmp"))
                except FileNotFoundError:
                    pass


def _peaks_after(blocks: int) -> list[tuple[int, int]]:
    """(level, j) of the MMR's peaks after ``blocks`` block roots, largest first."""
    out, done = [], 0
    for level in range(blocks.bit_length() - 1, -1, -1):
        if blocks >> level & 1:
            out.append((level, done >> level))
            done += 1 << level
    return out


class IndexReader:
    """Read access to the index files (None from :meth:`open` when there is no index)."""

    def __init__(self, pos_fd: int, mmr_fd: int) -> None:
        self._pos, self._mmr = pos_fd, mmr_fd
        self.blocks = max(0, (os.fstat(pos_fd).st_size - len(POS_MAGIC)) // _POS.size)
        self.nodes = max(0, (os.fstat(mmr_fd).st_size - len(MMR_MAGIC)) // _HASH)

    @classmethod
    def open(cls, ledger_dir: Path) -> IndexReader | None:
        fds: list[int] = []
        try:
            for name, magic in ((POS_FILE, POS_MAGIC), (MMR_FILE, MMR_MAGIC)):
                fd = os.open(Path(ledger_dir) / name, os.O_RDONLY | os.O_NOFOLLOW)
                fds.append(fd)
                if os.pread(fd, len(magic), 0) != magic:
                    raise OSError("bad index magic")
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        return cls(*fds)

    def pos_entry(self, block: int) -> bytes:
        return os.pread(self._pos, _POS.size, len(POS_MAGIC) + block * _POS.size)

    def position(self, seq: int) -> tuple[int, int, int] | None:
        """(block start seq, segment first seq, offset) of the block holding ``seq``, or None."""
        block = seq // BLOCK
        if block >= self.blocks:
            return None
        data = self.pos_entry(block)
        if len(data) != _POS.size:
            return None
        segment, offset = _POS.unpack(data)
        return block * BLOCK, segment, offset

    def node_at(self, pos: int) -> bytes:
        return os.pread(self._mmr, _HASH, len(MMR_MAGIC) + pos * _HASH)

    def node(self, level: int, j: int) -> bytes | None:
        """Root of blocks ``[j * 2^level, (j + 1) * 2^level)``, None if the index does not hold it yet."""
        pos = mmr_pos(level, j)
        if pos >= self.nodes:
            return None
        h = self.node_at(pos)
        return h if len(h) == _HASH else None

    def close(self) -> None:
        os.close(self._pos)
        os.close(self._mmr)


def save_kinds(ledger_dir: Path, size: int, latest: dict[str, int]) -> None:
    """Persist the newest seq of each kind among the first ``size`` records (a cache: no fsync)."""
    import msgpack

    path = Path(ledger_dir) / KINDS_FILE
    tmp = path.with_name(KINDS_FILE + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(msgpack.packb({"size": size, "latest": dict(latest)}, use_bin_type=True))
        os.replace(tmp, path)
    except OSError:
        pass  # only a cache: readers scan instead


def load_kinds(ledger_dir: Path) -> tuple[int, dict[str, int]]:
    """(size, {kind: seq}) as last saved; (0, {}) when missing or unreadable."""
    from .codec import is_strict

    try:
        with open(Path(ledger_dir) / KINDS_FILE, "rb") as fh:
            obj = is_strict(fh.read(1 << 20))
    except OSError:
        return 0, {}
    if type(obj) is not dict or type(obj.get("size")) is not int or type(obj.get("latest")) is not dict:
        return 0, {}
    latest = {k: v for k, v in obj["latest"].items() if type(v) is int and 0 <= v < obj["size"]}
    return obj["size"], latest

"""RFC 6962 / RFC 9162 Merkle tree over leaf hashes (pure).

leaf = SHA-256(0x00 || record bytes) (see :func:`record.leaf_hash`),
node = SHA-256(0x01 || left || right), empty tree = SHA-256("").
Proof generation follows RFC 6962 section 2.1; verification RFC 9162 sections
2.1.3.2 and 2.1.4.2. Verification functions return nothing or raise ProofError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import LedgerError

__all__ = [
    "EMPTY_ROOT",
    "node_hash",
    "Frontier",
    "SubtreeSource",
    "tree_root",
    "inclusion_proof",
    "verify_inclusion",
    "consistency_proof",
    "verify_consistency",
    "ProofError",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    """Compact range: the roots of the perfect subtrees on the right edge (O(log n) memory)."""

    __slots__ = ("size", "_stack")

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes strictly decreasing

    def append(self, leaf: bytes) -> None:
        stack = self._stack
        size, h = 1, leaf
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            h = node_hash(left, h)
            size += left_size
        stack.append((size, h))
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """:meth:`append` each leaf (one tight loop: verifiers add many)."""
        stack, sha256 = self._stack, hashlib.sha256
        push, pop = stack.append, stack.pop
        for h in leaves:
            size = 1
            while stack and stack[-1][0] == size:
                left_size, left = pop()
                h = sha256(b"\x01" + left + h).digest()
                size += left_size
            push((size, h))
        self.size += len(leaves)

    def push_subtree(self, size: int, root: bytes) -> None:
        """Append a perfect subtree of ``size`` leaves (a power of two) by its root; the tree's size must
        be a multiple of ``size`` (so the subtree is aligned, as RFC 6962 splits it)."""
        if size & (size - 1) or self.size % size:
            raise ValueError(f"a subtree of {size} leaves does not fit a tree of {self.size}")
        stack, h, n = self._stack, root, size
        while stack and stack[-1][0] == n:
            left_size, left = stack.pop()
            h = node_hash(left, h)
            n += left_size
        stack.append((n, h))
        self.size += size

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        h = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            h = node_hash(left, h)
        return h

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> Frontier:
        """Rebuild the frontier of a tree of ``size`` leaves from :attr:`hashes` (ValueError if they do not fit)."""
        sizes = [1 << b for b in range(size.bit_length() - 1, -1, -1) if size >> b & 1] if size > 0 else []
        if size < 0 or len(sizes) != len(hashes) or any(len(h) != 32 for h in hashes):
            raise ValueError(f"a frontier of {size} leaves has {len(sizes)} hashes of 32 bytes")
        f = cls()
        f.size = size
        f._stack = [(n, bytes(h)) for n, h in zip(sizes, hashes, strict=False)]
        return f

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect subtrees' roots, largest (leftmost) first: the state :meth:`from_hashes` takes."""
        return tuple(h for _, h in self._stack)

    def copy(self) -> Frontier:
        other = Frontier()
        other.size = self.size
        other._stack = list(self._stack)
        return other


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of a list of leaf hashes."""
    f = Frontier()
    f.extend(leaves)
    return f.root()


class SubtreeSource:
    """Subtree roots of a tree whose first ``base.size`` leaves are known only by their frontier
    (a pruned log): ranges inside the pruned part are available only as whole frontier subtrees."""

    def __init__(self, leaves: Sequence[bytes], base: Frontier | None = None) -> None:
        self.leaves = leaves
        self.offset = base.size if base is not None else 0
        self.size = self.offset + len(leaves)
        self._blocks: dict[tuple[int, int], bytes] = {}
        lo = 0
        for n, h in base._stack if base is not None else ():
            self._blocks[(lo, lo + n)] = h
            lo += n

    def root(self, lo: int, hi: int) -> bytes:
        """MTH of leaves [lo, hi); ValueError if it needs pruned leaves."""
        if (lo, hi) in self._blocks:
            return self._blocks[(lo, hi)]
        if lo >= self.offset:
            return tree_root(self.leaves[lo - self.offset : hi - self.offset])
        if hi <= self.offset or hi - lo == 1:
            raise ValueError(f"leaves {lo}..{hi - 1} were pruned: only the frontier at {self.offset} is kept")
        k = _split(hi - lo)
        return node_hash(self.root(lo, lo + k), self.root(lo + k, hi))


def inclusion_proof(index: int, leaves: Sequence[bytes], *, base: Frontier | None = None) -> list[bytes]:
    """PATH(index, D[n]) for the tree of ``leaves`` (with ``base``: of the base's leaves then ``leaves``)."""
    src = SubtreeSource(leaves, base)
    if not src.offset <= index < src.size:
        raise ValueError(f"leaf index {index} outside tree of size {src.size} (first kept leaf {src.offset})")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(m, lo, lo + k) + [src.root(lo + k, hi)]
        return path(m - k, lo + k, hi) + [src.root(lo, lo + k)]

    return path(index, 0, src.size)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless ``leaf`` is at ``index`` in the tree of ``size`` with ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32:
            raise ProofError("proof hash is not 32 bytes")
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("inclusion proof does not lead to the checkpoint's root")


def consistency_proof(old_size: int, leaves: Sequence[bytes], *, base: Frontier | None = None) -> list[bytes]:
    """PROOF(m, D[n]): shows the tree of ``old_size`` is a prefix of the tree of ``leaves`` (see inclusion_proof)."""
    src = SubtreeSource(leaves, base)
    n = src.size
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} outside 0..{n}")
    if old_size in (0, n):
        return []

    def sub(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [src.root(lo, hi)]
        k = _split(n)
        if m <= k:
            return sub(m, lo, lo + k, complete) + [src.root(lo + k, hi)]
        return sub(m - k, lo + k, hi, False) + [src.root(lo, lo + k)]

    return sub(old_size, 0, n, True)


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """Raise ProofError unless the tree (old_size, old_root) is a prefix of (new_size, new_root)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == new_size:
        if proof or old_root != new_root:
            raise ProofError("two trees of the same size have different roots")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if any(len(p) != 32 for p in proof):
        raise ProofError("proof hash is not 32 bytes")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        raise ProofError("consistency proof is empty")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise ProofError("the two trees are not consistent: the log was rewritten (fork)")

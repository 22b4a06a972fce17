"""The agent's trust list and peer sequence state, on disk (thin shell).

``STATE/data/peers.json`` (0600) lists the peers whose messages are accepted;
``STATE/data/peer-seq.json`` (0600) keeps the next sequence number to send to each peer and the
last sequence accepted from each. Both are replaced atomically (docs/peer-messages.md).
A corrupt file is refused with an error, never silently reset.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from ..._internal.paths import StateLayout
from ...errors import DataError
from ...identity.keys import PublicKey
from .envelope import ReplayState

__all__ = ["Peer", "TrustList", "PeerSeqStore", "load_trust_list", "add_peer", "remove_peer", "trust_path"]


@dataclass(frozen=True)
class Peer:
    did: str
    name: str | None
    added_at: str  # RFC 3339 UTC


@dataclass(frozen=True)
class TrustList:
    peers: tuple[Peer, ...] = ()

    def keys(self) -> dict[str, PublicKey]:
        return {p.did: PublicKey.from_did(p.did) for p in self.peers}

    def get(self, did: str) -> Peer | None:
        return next((p for p in self.peers if p.did == did), None)


def _trust_path(state_dir: Path) -> Path:
    return StateLayout(state_dir).data / "peers.json"


def _load_json(path: Path, *, what: str) -> Any:
    if not path.exists():
        return None
    raw = read_bytes(path, what=what, max_size=4 * 1024 * 1024)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DataError(
            f"{what} {path} is corrupt: {exc}", hint="restore it from a backup; Kestrel will not overwrite it"
        ) from None


def trust_path(state_dir: str | os.PathLike[str]) -> Path:
    """``STATE/data/peers.json``."""
    return _trust_path(Path(state_dir))


def load_trust_list(state_dir: str | os.PathLike[str]) -> TrustList:
    path = _trust_path(Path(state_dir))
    doc = _load_json(path, what="trust list")
    if doc is None:
        return TrustList()
    try:
        if doc.get("version") != 1:
            raise ValueError("unknown version")
        peers = tuple(Peer(did=p["did"], name=p.get("name"), added_at=p["added_at"]) for p in doc["peers"])
        for p in peers:
            PublicKey.from_did(p.did)
    except (AttributeError, KeyError, TypeError, ValueError, DataError) as exc:
        raise DataError(
            f"trust list {path} is malformed: {exc}", hint="restore it from a backup; Kestrel will not overwrite it"
        ) from None
    return TrustList(peers)


def _save_trust_list(state_dir: Path, trust: TrustList) -> None:
    ensure_private_dir(StateLayout(state_dir).data)
    doc = {"version": 1, "peers": [asdict(p) for p in trust.peers]}
    atomic_write(_trust_path(state_dir), json.dumps(doc, indent=1).encode() + b"\n")


def add_peer(
    state_dir: str | os.PathLike[str], did: str, *, name: str | None = None, now: float | None = None
) -> tuple[Peer, bool]:
    """Trust ``did``; return ``(peer, added)`` where ``added`` is False if it was already trusted."""
    PublicKey.from_did(did)  # raises KeyFormatError with a hint
    state_dir = Path(state_dir)
    trust = load_trust_list(state_dir)
    existing = trust.get(did)
    if existing is not None:
        return existing, False
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    peer = Peer(did=did, name=name, added_at=stamp)
    _save_trust_list(state_dir, TrustList(trust.peers + (peer,)))
    return peer, True


def remove_peer(state_dir: str | os.PathLike[str], did: str) -> bool:
    state_dir = Path(state_dir)
    trust = load_trust_list(state_dir)
    kept = tuple(p for p in trust.peers if p.did != did)
    if len(kept) == len(trust.peers):
        return False
    _save_trust_list(state_dir, TrustList(kept))
    return True


SEQ_BLOCK = 32


class PeerSeqStore:
    """Outgoing sequence counters and the incoming replay state, persisted atomically."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._path = StateLayout(Path(state_dir)).data / "peer-seq.json"
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}  # last number handed out per recipient (within the reserved block)
        doc = _load_json(self._path, what="peer sequence state") or {"version": 1, "sent": {}, "received": {}}
        try:
            self._sent = {str(k): int(v) for k, v in doc["sent"].items()}
            self._received = {str(k): int(v) for k, v in doc["received"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"peer sequence state {self._path} is malformed: {exc}") from None

    def _save(self) -> None:
        ensure_private_dir(self._path.parent)
        doc = {"version": 1, "sent": self._sent, "received": self._received}
        atomic_write(self._path, json.dumps(doc, sort_keys=True).encode() + b"\n")

    def next_outgoing(self, recipient: str) -> int:
        """The next sequence number for ``recipient``, never handed out before, even across a crash.

        Numbers are reserved durably in blocks of :data:`SEQ_BLOCK`: the file holds the block's
        ceiling, so only one send in SEQ_BLOCK writes it (a crash skips the rest of a block;
        receivers need increasing numbers, not consecutive ones)."""
        with self._lock:
            seq = self._next.get(recipient, self._sent.get(recipient, 0)) + 1
            if seq > self._sent.get(recipient, 0):
                self._sent[recipient] = seq + SEQ_BLOCK - 1
                self._save()
            self._next[recipient] = seq
            return seq

    @property
    def replay(self) -> ReplayState:
        with self._lock:
            return ReplayState(dict(self._received))

    def commit(self, replay: ReplayState) -> None:
        with self._lock:
            for sender, seq in replay.last_seq.items():
                if seq > self._received.get(sender, 0):
                    self._received[sender] = seq
            self._save()

"""Access tokens of the local web UI: ``STATE/data/ui/tokens.json`` (docs/ui.md, "Tokens").

The owner creates a token on the device with ``kestrel ui token``; it is printed once and only
its SHA-256 is stored. A token reads ``kui_<id>_<secret>``: ``id`` (8 hex digits) names it in
the file, the ledger and the UI; ``secret`` is 32 random bytes (base64url). :func:`check`
is pure (the file's entries and an explicit ``now`` in, a :class:`TokenCheck` out);
:class:`TokenFile` is the file shell.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._internal.fsutil import atomic_write, ensure_private_dir, read_bytes
from ..._internal.paths import StateLayout
from ...errors import DataError, UsageError

__all__ = ["TokenEntry", "TokenCheck", "TokenFile", "IssuedToken", "check", "parse_token", "MAX_TOKENS", "tokens_path"]

FORMAT = 1
MAX_TOKENS = 64
MAX_FILE = 64 * 1024
MAX_TOKEN_LEN = 128
MAX_TTL_S = 366 * 86400
_REDO = "remove it and create new tokens with `kestrel ui token`"
_TOKEN = re.compile(r"kui_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")


def tokens_path(state_dir: str | os.PathLike[str]) -> Path:
    return StateLayout(state_dir).data / "ui" / "tokens.json"


@dataclass(frozen=True)
class TokenEntry:
    id: str
    sha256: str  # hex digest of the whole token text
    created: float
    expires: float
    label: str = ""


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of presenting a token: ``ok``, or the refusal ``reason`` (malformed, unknown, expired)."""

    ok: bool
    reason: str | None = None
    id: str | None = None  # the token's id when it could be read
    expires: float | None = None


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once, never stored
    entry: TokenEntry


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text, or None when it is not one."""
    if len(text) > MAX_TOKEN_LEN:
        return None
    m = _TOKEN.fullmatch(text.strip())
    return (m.group(1), m.group(2)) if m else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def check(entries: dict[str, TokenEntry], token: str, *, now: float) -> TokenCheck:
    """Is ``token`` one of ``entries`` and unexpired? Constant-time on the secret."""
    parsed = parse_token(token)
    if parsed is None:
        return TokenCheck(False, "malformed")
    tid = parsed[0]
    entry = entries.get(tid)
    if entry is None or not hmac.compare_digest(entry.sha256, _digest(token)):
        return TokenCheck(False, "unknown", tid)
    if now >= entry.expires:
        return TokenCheck(False, "expired", tid, entry.expires)
    return TokenCheck(True, None, tid, entry.expires)


def _entries(data: bytes, source: str) -> dict[str, TokenEntry]:
    try:
        obj = json.loads(data)
        if obj.get("format") != FORMAT or not isinstance(obj.get("tokens"), list):
            raise ValueError(f'expected {{"format": {FORMAT}, "tokens": [...]}}')
        out = {}
        for t in obj["tokens"][:MAX_TOKENS]:
            e = TokenEntry(
                str(t["id"]), str(t["sha256"]), float(t["created"]), float(t["expires"]), str(t.get("label", ""))[:100]
            )
            if not re.fullmatch(r"[0-9a-f]{8}", e.id) or not re.fullmatch(r"[0-9a-f]{64}", e.sha256):
                raise ValueError(f"token entry {e.id!r} is malformed")
            out[e.id] = e
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{source}: not a UI token file: {exc}", hint=_REDO) from None


class TokenFile:
    """``STATE/data/ui/tokens.json``: read when it changed (one ``stat`` per check), written atomically."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = tokens_path(state_dir)
        self._sig: tuple[int, int, int] | None = None
        self._cache: dict[str, TokenEntry] = {}

    def entries(self) -> dict[str, TokenEntry]:
        """The current tokens (empty when there is no file); DataError when the file is corrupt."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._sig, self._cache = None, {}
            return {}
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != self._sig:
            try:
                data = read_bytes(self.path, what="UI token file", max_size=MAX_FILE)
            except DataError as exc:
                raise DataError(exc.message, hint=_REDO) from None
            self._cache = _entries(data, str(self.path))
            self._sig = sig
        return self._cache

    def check(self, token: str, *, now: float) -> TokenCheck:
        return check(self.entries(), token, now=now)

    def _write(self, entries: dict[str, TokenEntry]) -> None:
        ensure_private_dir(self.path.parent)
        doc = {"format": FORMAT, "tokens": [vars(e) for e in entries.values()]}
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode=0o600)
        self._give_to_state_owner()
        self._sig = None

    def _give_to_state_owner(self) -> None:
        """``sudo kestrel ui token`` on a state directory of the daemon's user (``User=kestrel``): hand
        ``data/``, ``data/ui/`` and the file to that user, or the daemon could not read its tokens."""
        if os.geteuid() != 0:
            return
        state = self.path.parents[2]
        st = os.stat(state)
        if st.st_uid == 0:
            return
        for p in (self.path.parents[1], self.path.parent, self.path):
            if os.lstat(p).st_uid == 0:
                os.chown(p, st.st_uid, st.st_gid, follow_symlinks=False)

    def issue(self, *, ttl_s: float, now: float, label: str = "") -> IssuedToken:
        """Create a token valid for ``ttl_s`` seconds from ``now``; expired entries are dropped."""
        if not 0 < ttl_s <= MAX_TTL_S:
            raise UsageError(
                f"a UI token lives between 1 second and 366 days, not {ttl_s / 86400:.2f} days",
                hint="kestrel ui token --expires 30d",
            )
        live = {k: e for k, e in self.entries().items() if e.expires > now}
        if len(live) >= MAX_TOKENS:
            raise UsageError(
                f"there are already {MAX_TOKENS} UI tokens",
                hint="revoke some: kestrel ui token --list, kestrel ui token --revoke ID",
            )
        tid = secrets.token_hex(4)
        while tid in live:
            tid = secrets.token_hex(4)
        token = f"kui_{tid}_{secrets.token_urlsafe(32)}"
        entry = TokenEntry(tid, _digest(token), now, now + ttl_s, label[:100])
        live[tid] = entry
        self._write(live)
        return IssuedToken(token, entry)

    def revoke(self, tid: str) -> bool:
        entries = dict(self.entries())
        if entries.pop(tid, None) is None:
            return False
        self._write(entries)
        return True

    def describe(self, *, now: float) -> list[dict[str, Any]]:
        return [
            {"id": e.id, "label": e.label, "created": e.created, "expires": e.expires, "expired": now >= e.expires}
            for e in sorted(self.entries().values(), key=lambda e: e.created)
        ]

"""Signed, optionally encrypted agent-to-agent messages: the pure core (no I/O).

``seal`` builds the exact bytes a sender publishes; ``open_message`` checks them against the
recipient's trust list and replay state and returns a :class:`VerifiedMessage` or raises a
:class:`PeerMessageError` whose ``reason`` is one of :data:`REASONS`. Nothing is re-encoded on
verification: the signature covers the header bytes and payload bytes exactly as received.
The format is specified in docs/peer-messages.md.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ...errors import DataError
from ...identity.keys import KeyFormatError, PublicKey, SignatureError, Signer
from .keyagree import KeyAgreement, derive_key, ephemeral_exchange

__all__ = [
    "seal",
    "open_message",
    "VerifiedMessage",
    "PeerMessageError",
    "ReplayState",
    "REASONS",
    "DOMAIN",
    "MAX_MESSAGE",
    "DEFAULT_WINDOW_S",
    "message_digest",
]

DOMAIN = b"kestrel/peer-message/v1\x00"
ENC_NONE = "none"
ENC_AEAD = "ecdh-hkdf-sha256-chacha20poly1305"
MAX_MESSAGE = 256 * 1024
DEFAULT_WINDOW_S = 300.0
REASONS = ("malformed", "not-for-us", "unknown-sender", "forged", "replayed", "stale", "undecryptable")


class PeerMessageError(DataError):
    """A peer message was refused. ``reason`` is a code from REASONS; ``sender`` as claimed."""

    def __init__(
        self, reason: str, message: str, *, sender: str | None = None, seq: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(f"peer message refused ({reason}): {message}", hint=hint)
        self.reason, self.sender, self.seq = reason, sender, seq


@dataclass(frozen=True)
class ReplayState:
    """Highest sequence number accepted from each sender (did -> seq)."""

    last_seq: Mapping[str, int] = field(default_factory=dict)

    def accept(self, sender: str, seq: int) -> ReplayState:
        updated = dict(self.last_seq)
        updated[sender] = seq
        return ReplayState(updated)


@dataclass(frozen=True)
class VerifiedMessage:
    sender: str
    recipient: str
    seq: int
    time_ms: int
    encrypted: bool
    body: Any
    digest: str  # hex sha256 of the whole message bytes
    replay: ReplayState  # the replay state to persist once the message is recorded


def message_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _signed_bytes(header: bytes, payload: bytes) -> bytes:
    return DOMAIN + struct.pack(">I", len(header)) + header + payload


def seal(body: Any, *, signer: Signer, recipient: PublicKey, seq: int, now: float, encrypt: bool = False) -> bytes:
    """Return the message bytes carrying ``body`` (msgpack-compatible) from ``signer`` to ``recipient``."""
    if seq < 1:
        raise ValueError("sequence numbers start at 1")
    sender = signer.public_key.did
    plaintext = msgpack.packb(body, use_bin_type=True)
    header: dict[str, Any] = {
        "from": sender,
        "to": recipient.did,
        "seq": seq,
        "ts": int(now * 1000),
        "enc": ENC_AEAD if encrypt else ENC_NONE,
    }
    if encrypt:
        epk, shared = ephemeral_exchange(recipient)
        header["epk"], header["nonce"] = epk, os.urandom(12)
        header_bytes = msgpack.packb(header, use_bin_type=True)
        key = derive_key(shared, ephemeral_public=epk, recipient=recipient)
        payload = ChaCha20Poly1305(key).encrypt(header["nonce"], plaintext, header_bytes)
    else:
        header_bytes = msgpack.packb(header, use_bin_type=True)
        payload = plaintext
    signature = signer.sign(_signed_bytes(header_bytes, payload))
    data = msgpack.packb([1, header_bytes, payload, signature], use_bin_type=True)
    if len(data) > MAX_MESSAGE:
        raise DataError(
            f"peer message is {len(data)} bytes; the limit is {MAX_MESSAGE}",
            hint="send a digest or a reference instead of the data",
        )
    return data


def _parse(data: bytes) -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_MESSAGE:
        raise PeerMessageError("malformed", "not bytes, or larger than the limit")
    try:
        outer = msgpack.unpackb(data, raw=False, strict_map_key=True)
        version, header_bytes, payload, signature = outer
        header = msgpack.unpackb(header_bytes, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise PeerMessageError("malformed", f"cannot decode: {exc}") from None
    if version != 1 or not all(isinstance(x, bytes) for x in (header_bytes, payload, signature)):
        raise PeerMessageError("malformed", "unknown version or field types")
    if not isinstance(header, dict):
        raise PeerMessageError("malformed", "header is not a map")
    for key, typ in (("from", str), ("to", str), ("seq", int), ("ts", int), ("enc", str)):
        if not isinstance(header.get(key), typ) or isinstance(header.get(key), bool):
            raise PeerMessageError(
                "malformed",
                f"header field {key!r} missing or not {typ.__name__}",
                sender=header.get("from") if isinstance(header.get("from"), str) else None,
            )
    return header_bytes, payload, signature, header


def open_message(
    data: bytes,
    *,
    me: KeyAgreement | PublicKey,
    trusted: Mapping[str, PublicKey],
    replay: ReplayState,
    now: float,
    window_s: float = DEFAULT_WINDOW_S,
) -> VerifiedMessage:
    """Verify ``data`` for the recipient ``me``; return the verified message or raise PeerMessageError.

    ``me`` must be a KeyAgreement to open encrypted messages. Checks, in order: format,
    recipient, sender in ``trusted``, signature, sequence (strictly above the last accepted),
    timestamp within ``window_s`` of ``now``, then decryption.
    """
    header_bytes, payload, signature, header = _parse(data)
    sender, seq = header["from"], header["seq"]
    my_key = me if isinstance(me, PublicKey) else me.public_key
    if header["to"] != my_key.did:
        raise PeerMessageError("not-for-us", f"addressed to {header['to']}", sender=sender, seq=seq)
    key = trusted.get(sender)
    if key is None:
        raise PeerMessageError(
            "unknown-sender",
            f"{sender} is not in the trust list",
            sender=sender,
            seq=seq,
            hint=f"if you trust it, run: kestrel agent-connect {sender}",
        )
    try:
        key.verify(signature, _signed_bytes(header_bytes, payload))
    except (SignatureError, KeyFormatError):
        raise PeerMessageError("forged", f"signature does not verify for {sender}", sender=sender, seq=seq) from None
    if seq <= replay.last_seq.get(sender, 0):
        raise PeerMessageError(
            "replayed",
            f"sequence {seq} already seen from {sender} (last accepted {replay.last_seq.get(sender, 0)})",
            sender=sender,
            seq=seq,
        )
    skew = abs(now - header["ts"] / 1000.0)
    if skew > window_s:
        raise PeerMessageError(
            "stale",
            f"timestamp is {skew:.0f}s from now (window {window_s:.0f}s)",
            sender=sender,
            seq=seq,
            hint="check both devices' clocks",
        )
    body_bytes = payload
    if header["enc"] == ENC_AEAD:
        body_bytes = _decrypt(header, header_bytes, payload, me, sender, seq)
    elif header["enc"] != ENC_NONE:
        raise PeerMessageError("malformed", f"unknown encryption {header['enc']!r}", sender=sender, seq=seq)
    try:
        body = msgpack.unpackb(body_bytes, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise PeerMessageError("malformed", f"body does not decode: {exc}", sender=sender, seq=seq) from None
    return VerifiedMessage(
        sender=sender,
        recipient=my_key.did,
        seq=seq,
        time_ms=header["ts"],
        encrypted=header["enc"] == ENC_AEAD,
        body=body,
        digest=message_digest(bytes(data)),
        replay=replay.accept(sender, seq),
    )


def _decrypt(
    header: dict[str, Any], header_bytes: bytes, payload: bytes, me: KeyAgreement | PublicKey, sender: str, seq: int
) -> bytes:
    if isinstance(me, PublicKey):
        raise PeerMessageError(
            "undecryptable", "message is encrypted and no key agreement is available", sender=sender, seq=seq
        )
    epk, nonce = header.get("epk"), header.get("nonce")
    if not isinstance(epk, bytes) or not isinstance(nonce, bytes) or len(nonce) != 12:
        raise PeerMessageError("malformed", "encrypted message lacks epk/nonce", sender=sender, seq=seq)
    try:
        shared = me.exchange(epk)
        key = derive_key(shared, ephemeral_public=epk, recipient=me.public_key)
        return ChaCha20Poly1305(key).decrypt(nonce, payload, header_bytes)
    except (InvalidTag, DataError):
        raise PeerMessageError("undecryptable", "decryption failed", sender=sender, seq=seq) from None

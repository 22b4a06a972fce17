"""Pure core: the :class:`Identity` value and its ``identity.json`` encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import IdentityCorruptError
from .keys import Algorithm, KeyFormatError, PublicKey

__all__ = ["Identity", "FORMAT", "BACKENDS", "PROTECTIONS", "encode_identity", "parse_identity"]

FORMAT = "kestrel-identity/1"
BACKENDS = ("file", "tpm")
PROTECTIONS = ("passphrase", "machine-bound", "tpm")


@dataclass(frozen=True)
class Identity:
    """Public facts about an agent's identity. Holds no secret."""

    did: str
    name: str
    algorithm: Algorithm
    backend: str  # "file" | "tpm"
    created_at: str  # RFC 3339 UTC, e.g. 2026-11-25T22:40:13Z
    public_key: PublicKey
    tcti: str | None = None  # TPM only: the TCTI used at creation
    protection: str = "passphrase"  # "passphrase" | "machine-bound" | "tpm"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "did": self.did,
            "name": self.name,
            "algorithm": self.algorithm.value,
            "backend": self.backend,
            "protection": self.protection,
            "created_at": self.created_at,
            "tcti": self.tcti,
        }


def encode_identity(identity: Identity) -> bytes:
    return (json.dumps(identity.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def parse_identity(data: bytes, *, source: str = "identity.json") -> Identity:
    """Parse and cross-check identity.json; raise IdentityCorruptError naming the field."""

    def bad(msg: str) -> IdentityCorruptError:
        return IdentityCorruptError(
            f"{source}: {msg}",
            hint="identity.json holds only public facts; restore it from a backup of the state "
            "directory or from `kestrel identity backup`",
        )

    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("top level must be an object")
    if doc.get("format") != FORMAT:
        raise bad(f"unknown format {doc.get('format')!r}, expected {FORMAT!r}")
    for key in ("did", "name", "algorithm", "backend", "created_at", "protection"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise bad(f"missing or non-string field {key!r}")
    tcti = doc.get("tcti")
    if tcti is not None and not isinstance(tcti, str):
        raise bad("field 'tcti' must be a string or null")
    try:
        public_key = PublicKey.from_did(doc["did"])
        algorithm = Algorithm(doc["algorithm"])
    except (KeyFormatError, ValueError) as exc:
        raise bad(f"invalid did or algorithm: {exc}") from None
    if public_key.algorithm is not algorithm:
        raise bad(f"algorithm {algorithm.value} disagrees with the did's key type")
    backend, protection = doc["backend"], doc["protection"]
    if backend not in BACKENDS or protection not in PROTECTIONS:
        raise bad(f"unknown backend {backend!r} or protection {protection!r}")
    if (backend == "tpm") != (protection == "tpm") or (backend == "tpm" and algorithm is not Algorithm.P256):
        raise bad(f"backend {backend!r}, protection {protection!r} and algorithm {algorithm.value} do not go together")
    return Identity(
        did=doc["did"],
        name=doc["name"],
        algorithm=algorithm,
        backend=backend,
        created_at=doc["created_at"],
        public_key=public_key,
        tcti=tcti,
        protection=protection,
    )

"""Bundle container (pure): build, parse and verify. Byte layout in docs/bundle-format.md.

``verify_bundle`` takes the bundle bytes, the trust root, ``now``, the agent's
DID and groups and the device's current counter, and returns a
:class:`VerifiedBundle` or raises a :class:`BundleError` subclass whose
``code`` names the reason. Signatures are checked over the exact manifest
bytes before the manifest is parsed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..identity.keys import Signer
from .errors import (
    BundleContentError,
    BundleExpiredError,
    BundleFormatError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTargetError,
)
from .root import TrustRoot
from .signing import (
    BUNDLE_TYPE,
    encode_signatures,
    parse_bls_entries,
    parse_signatures,
    sign_entry,
    strict_json,
    threshold_signers,
)

__all__ = [
    "MAGIC",
    "Limits",
    "Entry",
    "Manifest",
    "VerifiedBundle",
    "build_manifest",
    "encode_bundle",
    "split_bundle",
    "parse_manifest",
    "sign_bundle",
    "verify_bundle",
    "verify_head",
    "VerifiedHead",
    "MAX_HEAD",
    "format_time",
]

MAGIC = b"KSTRLBN1"
_HEADER = struct.Struct(">I")
MAX_MANIFEST = 64 * 1024
MAX_SIGBLOCK = 16 * 1024
MAX_COUNTER = 2**53 - 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = {"name", "role", "size", "sha256"}
_MANIFEST_KEYS = {"_type", "format", "version", "counter", "created", "expires", "targets", "contents"}


@dataclass(frozen=True)
class Limits:
    """Size limits enforced before anything is allocated or hashed."""

    max_bundle: int = 512 * 1024 * 1024
    max_entry: int = 256 * 1024 * 1024
    max_policy: int = 1024 * 1024
    max_entries: int = 32


@dataclass(frozen=True)
class Entry:
    name: str
    role: str  # "policy" | "model"
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    version: str
    counter: int
    created: int  # unix seconds
    expires: int
    agents: tuple[str, ...]
    groups: tuple[str, ...]
    contents: tuple[Entry, ...]

    @property
    def policy(self) -> Entry:
        return next(e for e in self.contents if e.role == "policy")


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    signatures: bytes  # exact signature block
    digest: str  # hex sha256 of manifest_bytes: the bundle's identity
    signed_by: tuple[str, ...]
    contents: tuple[tuple[Entry, bytes | memoryview], ...]  # views into the bundle's bytes

    def content(self, name: str) -> bytes:
        return bytes(next(data for e, data in self.contents if e.name == name))


def format_time(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


def _parse_time(value: object, what: str) -> int:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _bad(f"{what} must be an RFC 3339 UTC time like 2027-01-31T00:00:00Z")
    try:
        import calendar  # only when a bundle is verified

        return calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise _bad(f"{what} is not a valid date") from None


def _bad(msg: str, code: str = "bad-manifest") -> BundleFormatError:
    return BundleFormatError(f"bundle manifest: {msg}", code=code)


# -- building ---------------------------------------------------------------
def build_manifest(
    *,
    version: str,
    counter: int,
    created: float,
    expires: float,
    agents: Sequence[str] = (),
    groups: Sequence[str] = (),
    contents: Sequence[tuple[str, str, bytes]],
) -> bytes:
    """Manifest bytes for (name, role, data) contents. Validated by parsing it back."""
    obj = {
        "_type": "kestrel.bundle",
        "format": 1,
        "version": version,
        "counter": counter,
        "created": format_time(created),
        "expires": format_time(expires),
        "targets": {"agents": list(agents), "groups": list(groups)},
        "contents": [
            {"name": n, "role": r, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, r, d in contents
        ],
    }
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    parse_manifest(data)
    return data


def encode_bundle(manifest: bytes, signatures: bytes, contents: Sequence[bytes | memoryview]) -> bytes:
    return b"".join(
        [MAGIC, _HEADER.pack(len(manifest)), manifest, _HEADER.pack(len(signatures)), signatures, *contents]
    )


def sign_bundle(bundle: bytes, signer: Signer) -> bytes:
    """Return ``bundle`` with ``signer``'s signature added (replacing an older one by the same key)."""
    manifest, sigblock, rest = split_bundle(bundle, Limits())
    entries = [e for e in _sig_entries(sigblock) if e.get("keyid") != signer.public_key.did]
    entries.append(sign_entry(signer, BUNDLE_TYPE, manifest))
    return encode_bundle(manifest, encode_signatures(entries), [rest])


def sign_bundle_bls(bundle: bytes, signer: Signer) -> bytes:
    """Return ``bundle`` with the owner's BLS signature added to its aggregate approval entry
    (kestrel.ota.bls_approval; the trust root must list the owner's BLS key for it to count)."""
    from .bls_approval import add_bls_approval

    manifest, sigblock, rest = split_bundle(bundle, Limits())
    entries = add_bls_approval(_sig_entries(sigblock), signer, BUNDLE_TYPE, manifest)  # type: ignore[arg-type]
    return encode_bundle(manifest, encode_signatures(entries), [rest])


def _sig_entries(sigblock: bytes) -> list[dict[str, Any]]:
    return [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in parse_signatures(sigblock, _sigbad)] + [
        {"bls": list(signers), "sig": base64.b64encode(s).decode()}
        for signers, s in parse_bls_entries(sigblock, _sigbad)
    ]


def _sigbad(msg: str) -> BundleFormatError:
    return BundleFormatError(f"bundle signatures: {msg}", code="bad-signatures")


# -- parsing ----------------------------------------------------------------
def split_bundle(data: bytes, limits: Limits) -> tuple[bytes, bytes, memoryview]:
    """Split into (manifest bytes, signature block, contents area) checking the framing."""
    if len(data) > limits.max_bundle:
        raise BundleFormatError(
            f"bundle is {len(data)} bytes, more than the limit of {limits.max_bundle}", code="oversize"
        )
    if data[: len(MAGIC)] != MAGIC:
        raise BundleFormatError(
            "not a Kestrel bundle (bad magic)",
            code="bad-magic",
            hint="build bundles with `kestrel bundle build`; compressed or tar files are not accepted",
        )
    view = memoryview(data)
    pos = len(MAGIC)
    parts = []
    for what, limit in (("manifest", MAX_MANIFEST), ("signature block", MAX_SIGBLOCK)):
        if len(view) < pos + 4:
            raise BundleFormatError(f"bundle truncated in the {what} length", code="truncated")
        (n,) = _HEADER.unpack_from(view, pos)
        if n == 0 or n > limit:
            raise BundleFormatError(f"{what} length {n} is outside 1..{limit}", code="oversize")
        pos += 4
        if len(view) < pos + n:
            raise BundleFormatError(f"bundle truncated inside the {what}", code="truncated")
        parts.append(bytes(view[pos : pos + n]))
        pos += n
    return parts[0], parts[1], view[pos:]


def parse_manifest(data: bytes, limits: Limits = Limits()) -> Manifest:
    obj = strict_json(data, _bad)
    if not isinstance(obj, dict) or set(obj) != _MANIFEST_KEYS:
        raise _bad(f"must be an object with exactly the keys {sorted(_MANIFEST_KEYS)}")
    if obj["_type"] != "kestrel.bundle" or obj["format"] != 1 or type(obj["format"]) is not int:
        raise _bad("_type must be 'kestrel.bundle' and format 1", code="wrong-type")
    version, counter = obj["version"], obj["counter"]
    if not isinstance(version, str) or not 1 <= len(version) <= 64:
        raise _bad("version must be a string of 1 to 64 characters")
    if type(counter) is not int or not 1 <= counter <= MAX_COUNTER:
        raise _bad(f"counter must be an integer between 1 and {MAX_COUNTER}")
    created, expires = _parse_time(obj["created"], "created"), _parse_time(obj["expires"], "expires")
    targets = obj["targets"]
    if not isinstance(targets, dict) or set(targets) != {"agents", "groups"}:
        raise _bad("targets must be an object with 'agents' and 'groups' lists")
    agents, groups = targets["agents"], targets["groups"]
    for lst, what in ((agents, "agents"), (groups, "groups")):
        if not isinstance(lst, list) or len(lst) > 1024 or not all(isinstance(x, str) and x for x in lst):
            raise _bad(f"targets.{what} must be a list of non-empty strings")
    if not agents and not groups:
        raise _bad("targets names no agent and no group")
    contents = obj["contents"]
    if not isinstance(contents, list) or not 1 <= len(contents) <= limits.max_entries:
        raise _bad(f"contents must list 1 to {limits.max_entries} entries")
    entries: list[Entry] = []
    seen: set[str] = set()
    for item in contents:
        entries.append(_entry(item, limits))
        folded = entries[-1].name.lower()
        if folded in seen:
            raise _bad(f"duplicate entry '{entries[-1].name}'", code="duplicate-entry")
        seen.add(folded)
    policies = [e for e in entries if e.role == "policy"]
    if len(policies) != 1:
        raise _bad("contents must hold exactly one entry with role 'policy'")
    if policies[0].size > limits.max_policy:
        raise _bad(f"policy is larger than {limits.max_policy} bytes", code="oversize")
    if sum(e.size for e in entries) > limits.max_bundle:
        raise _bad("contents are larger than the bundle size limit", code="oversize")
    return Manifest(version, counter, created, expires, tuple(agents), tuple(groups), tuple(entries))


def _entry(item: object, limits: Limits) -> Entry:
    if not isinstance(item, dict):
        raise _bad("each content entry must be an object")
    if set(item) != _ENTRY_KEYS:
        extra = sorted(set(item) - _ENTRY_KEYS)
        raise _bad(
            f"content entry has keys {sorted(item)}; only regular files "
            f"{sorted(_ENTRY_KEYS)} are supported" + (f" (refused: {extra})" if extra else ""),
            code="unsupported-entry",
        )
    name, role, size, digest = item["name"], item["role"], item["size"], item["sha256"]
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise _bad(f"entry name {name!r} is not a plain file name", code="bad-entry-name")
    if role not in ("policy", "model"):
        raise _bad(f"entry {name}: role must be 'policy' or 'model'")
    if type(size) is not int or not 0 <= size <= limits.max_entry:
        raise _bad(f"entry {name}: size must be an integer between 0 and {limits.max_entry}", code="oversize")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise _bad(f"entry {name}: sha256 must be 64 lower-case hex digits")
    return Entry(name, role, size, digest)


# -- verification -----------------------------------------------------------
#: the longest head (magic, manifest, signature block) a bundle can have
MAX_HEAD = len(MAGIC) + 4 + MAX_MANIFEST + 4 + MAX_SIGBLOCK


@dataclass(frozen=True)
class VerifiedHead:
    """A bundle whose head (signatures, manifest, targets, expiry, counter, framing) is verified;
    its contents are not read yet."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: bytes
    digest: str
    signed_by: tuple[str, ...]
    head_size: int  # bytes before the contents


def verify_head(
    prefix: bytes,
    *,
    size: int,
    root: TrustRoot,
    now: float,
    agent_id: str,
    groups: Sequence[str] = (),
    counter: int = 0,
    counter_digest: str | None = None,
    limits: Limits = Limits(),
) -> VerifiedHead:
    """Verify everything but the contents' hashes, from the first bytes of a bundle of ``size`` bytes.

    ``prefix`` needs at most :data:`MAX_HEAD` bytes (fewer when the bundle is shorter). This is
    what lets a device refuse a hostile file after reading ~80 KiB of it, whatever its size.
    """
    if size > limits.max_bundle:
        raise BundleFormatError(f"bundle is {size} bytes, more than the limit of {limits.max_bundle}", code="oversize")
    manifest_bytes, sigblock, rest = split_bundle(prefix, limits)
    head = _verify_manifest(
        manifest_bytes,
        sigblock,
        root=root,
        now=now,
        agent_id=agent_id,
        groups=groups,
        counter=counter,
        counter_digest=counter_digest,
        limits=limits,
        head_size=len(prefix) - len(rest),
    )
    _check_total(head.manifest, size - head.head_size)
    return head


def _check_total(manifest: Manifest, have: int) -> None:
    total = sum(e.size for e in manifest.contents)
    if have < total:
        raise BundleFormatError(f"bundle is truncated: contents hold {have} of {total} bytes", code="truncated")
    if have > total:
        raise BundleFormatError(f"bundle has {have - total} bytes after its declared contents", code="trailing-data")


def _verify_manifest(
    manifest_bytes: bytes,
    sigblock: bytes,
    *,
    root: TrustRoot,
    now: float,
    agent_id: str,
    groups: Sequence[str],
    counter: int,
    counter_digest: str | None,
    limits: Limits,
    head_size: int,
) -> VerifiedHead:
    sigs = parse_signatures(sigblock, _sigbad)
    signed = threshold_signers(sigs, root.owners, BUNDLE_TYPE, manifest_bytes)
    if len(signed) < root.threshold and root.bls:  # owners' BLS aggregate (kestrel bundle sign --bls)
        from .bls_approval import bls_signers

        signed = tuple(
            dict.fromkeys(signed + bls_signers(parse_bls_entries(sigblock, _sigbad), root, BUNDLE_TYPE, manifest_bytes))
        )
    if len(signed) < root.threshold:
        raise BundleSignatureError(
            f"bundle is signed by {len(signed)} distinct trusted owner key(s); "
            f"the trust root (version {root.version}) needs {root.threshold}",
            hint="sign it with `kestrel bundle sign --key OWNER_KEY` by enough owners",
        )
    manifest = parse_manifest(manifest_bytes, limits)
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if agent_id not in manifest.agents and not set(groups) & set(manifest.groups):
        raise BundleTargetError(f"bundle targets other agents or groups, not {agent_id}")
    if now >= manifest.expires:
        raise BundleExpiredError(f"bundle expired at {format_time(manifest.expires)}")
    if manifest.counter < counter or (manifest.counter == counter and digest != counter_digest):
        raise BundleRollbackError(
            f"bundle counter {manifest.counter} is not above the device's counter {counter}",
            hint="build the bundle with a higher --counter",
        )
    return VerifiedHead(manifest, manifest_bytes, sigblock, digest, signed, head_size)


def verify_bundle(
    data: bytes,
    *,
    root: TrustRoot,
    now: float,
    agent_id: str,
    groups: Sequence[str] = (),
    counter: int = 0,
    counter_digest: str | None = None,
    limits: Limits = Limits(),
) -> VerifiedBundle:
    """Verify a bundle completely. ``counter``/``counter_digest``: the device's anti-rollback
    state; a bundle must have a higher counter, or the same counter and the same manifest."""
    head = verify_head(
        data,
        size=len(data),
        root=root,
        now=now,
        agent_id=agent_id,
        groups=groups,
        counter=counter,
        counter_digest=counter_digest,
        limits=limits,
    )
    manifest, rest = head.manifest, memoryview(data)[head.head_size :]
    out = []
    pos = 0
    for e in manifest.contents:
        chunk = rest[pos : pos + e.size]  # a view: the contents are not copied
        pos += e.size
        if hashlib.sha256(chunk).hexdigest() != e.sha256:
            raise BundleContentError(f"content '{e.name}' does not match its sha256 in the manifest")
        out.append((e, chunk))
    return VerifiedBundle(manifest, head.manifest_bytes, head.signatures, head.digest, head.signed_by, tuple(out))

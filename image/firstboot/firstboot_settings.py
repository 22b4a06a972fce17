"""Pure core of first-boot provisioning: parse what the owner left on the boot partition.

No I/O here: bytes in, frozen values out, or a :class:`kestrel.errors.DataError` that says
what is wrong, in which file, and what to do. The format is specified in docs/image.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from kestrel.errors import ConfigError, DataError
from kestrel.ota.signing import strict_json

__all__ = [
    "OWNER_FORMAT",
    "OWNER_FILE",
    "DEVICE_FILE",
    "BUNDLE_SUFFIX",
    "MAX_INPUT_BYTES",
    "OwnerSettings",
    "BootInputs",
    "parse_owner_file",
    "parse_boot_inputs",
    "sha256_hex",
]

OWNER_FORMAT = "kestrel-owner/1"
OWNER_FILE = "owner.json"
DEVICE_FILE = "device.yaml"
BUNDLE_SUFFIX = ".kbundle"
MAX_INPUT_BYTES = 16 << 20  # the daemon's default ota.max_bundle; far above any owner.json
_KEYSTORES = ("auto", "tpm", "file")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_BUNDLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}\.kbundle$")
_HINT = "fix kestrel/owner.json on the SD card's boot partition (docs/image.md, 'owner.json') and reboot"


@dataclass(frozen=True)
class OwnerSettings:
    """The owner's choices for this device (``kestrel/owner.json``)."""

    owners: tuple[str, ...]  # did:key strings, checked again by `kestrel init-agent`
    threshold: int
    name: str | None = None  # None: "kestrel-" + the first 8 hex digits of the machine id
    groups: tuple[str, ...] = ()
    keystore: str = "auto"  # auto (TPM if /dev/tpmrm0 exists) | tpm (required) | file


@dataclass(frozen=True)
class BootInputs:
    """Everything first boot consumes from the boot partition, with the SHA-256 of each file."""

    owner: OwnerSettings | None
    device_yaml: bytes | None
    bundles: tuple[tuple[str, bytes], ...]  # (file name, bytes): none or one
    digests: tuple[tuple[str, str], ...]  # (file name, sha256 hex) of every consumed file


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_owner_file(data: bytes, *, source: str = OWNER_FILE) -> OwnerSettings:
    """Parse ``owner.json`` strictly: unknown or duplicate keys, wrong types are refused."""

    def fail(message: str) -> ConfigError:
        return ConfigError(message, path=source, hint=_HINT)

    try:
        text = data.decode("utf-8-sig")  # editors on Windows add a BOM
    except UnicodeDecodeError as exc:
        raise fail(f"not valid JSON ({exc})") from None
    obj = strict_json(text, fail)  # no duplicate keys, no NaN/Infinity
    if not isinstance(obj, dict):
        raise ConfigError("must be a JSON object", path=source, hint=_HINT)
    known = {"format", "owners", "threshold", "name", "groups", "keystore"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s): {', '.join(unknown)}",
            path=source,
            key=unknown[0],
            hint=f"allowed keys: {', '.join(sorted(known))}",
        )
    if obj.get("format") != OWNER_FORMAT:
        raise ConfigError(
            f"format must be {OWNER_FORMAT!r}, got {obj.get('format')!r}", path=source, key="format", hint=_HINT
        )
    owners = obj.get("owners")
    if not isinstance(owners, list) or not owners or not all(isinstance(o, str) for o in owners):
        raise ConfigError(
            "owners must be a non-empty list of did:key strings",
            path=source,
            key="owners",
            hint="`kestrel owner show` prints an owner's did:key",
        )
    bad = [o for o in owners if not o.startswith("did:key:z")]
    if bad:
        raise ConfigError(
            f"not a did:key: {bad[0]!r}",
            path=source,
            key="owners",
            hint="`kestrel owner show` prints an owner's did:key",
        )
    if len(set(owners)) != len(owners):
        raise ConfigError("the same owner key is listed twice", path=source, key="owners", hint=_HINT)
    threshold = obj.get("threshold", 1)
    if type(threshold) is not int or not 1 <= threshold <= len(owners):
        raise ConfigError(
            f"threshold must be an integer from 1 to {len(owners)} (the number of owners)",
            path=source,
            key="threshold",
            hint=_HINT,
        )
    name = obj.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise ConfigError("name must be 1-63 letters, digits, '.', '_' or '-'", path=source, key="name", hint=_HINT)
    groups = obj.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and _GROUP_RE.match(g) for g in groups):
        raise ConfigError("groups must be a list of lower-case group names", path=source, key="groups", hint=_HINT)
    keystore = obj.get("keystore", "auto")
    if keystore not in _KEYSTORES:
        raise ConfigError(f"keystore must be one of {', '.join(_KEYSTORES)}", path=source, key="keystore", hint=_HINT)
    return OwnerSettings(
        owners=tuple(owners), threshold=threshold, name=name, groups=tuple(sorted(set(groups))), keystore=keystore
    )


def parse_boot_inputs(files: dict[str, bytes], *, where: str) -> BootInputs:
    """Validate the files found in the boot partition's ``kestrel/`` directory.

    ``files`` maps file names to contents (only owner.json, device.yaml and ``*.kbundle``
    are passed in). ``where`` names the directory in messages.
    """
    from kestrel.daemon.config import parse_device_config

    for fname, data in files.items():
        if len(data) > MAX_INPUT_BYTES:
            raise DataError(
                f"{where}/{fname} is {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte limit",
                hint="remove it from the boot partition",
            )
    owner = None
    if OWNER_FILE in files:
        owner = parse_owner_file(files[OWNER_FILE], source=f"{where}/{OWNER_FILE}")
    device_yaml = files.get(DEVICE_FILE)
    if device_yaml is not None:
        try:
            text = device_yaml.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("not UTF-8 text", path=f"{where}/{DEVICE_FILE}") from None
        parse_device_config(text, source=f"{where}/{DEVICE_FILE}")  # raises ConfigError(file, line, key)
    bundles = []
    for fname in sorted(files):
        if fname.endswith(BUNDLE_SUFFIX):
            if not _BUNDLE_RE.match(fname):
                raise DataError(
                    f"{where}/{fname}: bundle file names use letters, digits, '.', '_', '-'", hint="rename the file"
                )
            bundles.append((fname, files[fname]))
    if len(bundles) > 1:
        raise DataError(
            f"{where} holds {len(bundles)} bundles; first boot applies one",
            hint="keep only the newest bundle (the highest counter) on the boot partition",
        )
    if bundles and owner is None:
        raise DataError(
            f"{where} holds a bundle but no {OWNER_FILE}: nobody could have signed it for this device",
            hint=f"add {OWNER_FILE} with the owner keys that signed the bundle",
        )
    digests = tuple((fname, sha256_hex(files[fname])) for fname in sorted(files))
    return BootInputs(owner=owner, device_yaml=device_yaml, bundles=tuple(bundles), digests=digests)

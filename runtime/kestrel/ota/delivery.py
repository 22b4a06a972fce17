"""Deliveries other than the CLI: a drop directory (USB stick) and MQTT payloads.

Both end in :func:`kestrel.ota.apply.apply_bundle`, exactly like ``kestrel ota apply``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.fsutil import open_nofollow, read_bytes, read_fd
from ..errors import DataError, KestrelError, TransportError
from .apply import AppliedBundle, HealthCheck, apply_bundle
from .bundle import Limits
from .errors import BundleError, BundleFormatError
from .store import OtaDir, durable_write

if TYPE_CHECKING:  # the TPM counter module is imported by whoever builds one
    from .tpmcounter import TpmCounter

__all__ = ["scan_drop_dir", "apply_message", "BUNDLE_SUFFIX"]

BUNDLE_SUFFIX = ".kbundle"
_SEEN_MAX = 256


def apply_message(state_dir: str | os.PathLike[str], payload: bytes, *, ledger: Any, now: float,
                  health: HealthCheck | None = None, limits: Limits = Limits(),
                  tpm: TpmCounter | None = None) -> AppliedBundle:
    """Apply a bundle received as an MQTT message payload (same checks as a file)."""
    return apply_bundle(state_dir, bytes(payload), ledger=ledger, now=now, source="mqtt",
                        health=health, limits=limits, tpm=tpm)


def scan_drop_dir(state_dir: str | os.PathLike[str], drop_dir: str | os.PathLike[str], *, ledger: Any,
                  now: float, health: HealthCheck | None = None, limits: Limits = Limits(),
                  tpm: TpmCounter | None = None) -> list[tuple[Path, AppliedBundle | KestrelError]]:
    """Apply each new ``*.kbundle`` regular file in ``drop_dir`` (read-only media is fine).

    A file already processed (same bytes) is skipped, so a stick left plugged in is not
    re-applied or re-rejected on every scan. Returns (path, result or error) per new file.
    """
    ota = OtaDir(state_dir)
    seen_file = ota.root / "drop-seen.json"
    seen = _load_seen(seen_file)
    results: list[tuple[Path, AppliedBundle | KestrelError]] = []
    try:
        names = sorted(os.listdir(drop_dir))
    except OSError:
        return results
    for name in names:
        if not name.endswith(BUNDLE_SUFFIX) or name.startswith("."):
            continue
        path = Path(drop_dir) / name
        try:
            data = _read_regular(path, limits.max_bundle)
        except BundleError as exc:
            key = f"{name}:{exc.code}"
            if key not in seen:
                results.append((path, exc))
                _note(ledger, exc, name)
                seen.append(key)
            continue
        except KestrelError as exc:
            results.append((path, exc))
            continue
        key = hashlib.sha256(data).hexdigest()
        if key in seen:
            continue
        try:
            results.append((path, apply_bundle(state_dir, data, ledger=ledger, now=now, source="drop",
                                               health=health, limits=limits, tpm=tpm)))
        except KestrelError as exc:
            results.append((path, exc))
        seen.append(key)
    if results:
        ota.ensure()
        durable_write(seen_file, json.dumps(seen[-_SEEN_MAX:]).encode())
    return results


def _read_regular(path: Path, limit: int) -> bytes:
    """Read a regular file without following a symlink (no TOCTOU between check and read)."""
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleFormatError(f"{path} is a symbolic link; refused", code="not-regular-file") from None
        raise TransportError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleFormatError(f"{path} is not a regular file (device, FIFO or directory refused)",
                                    code="not-regular-file")
        if st.st_size > limit:
            raise BundleFormatError(f"{path} is larger than {limit} bytes", code="oversize")
        data = read_fd(fd, limit)
    except OSError as exc:
        raise TransportError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise BundleFormatError(f"{path} grew beyond {limit} bytes while being read", code="oversize")
    return data


def _note(ledger: Any, exc: BundleError, name: str) -> None:
    ledger.append("ota.rejected", {"reason": exc.code, "message": exc.message[:500], "file": name,
                                   "source": "drop"})


def _load_seen(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        obj = json.loads(read_bytes(path, what="drop directory state", max_size=1 << 20))
    except (ValueError, DataError):
        return []
    return [x for x in obj if isinstance(x, str)] if isinstance(obj, list) else []

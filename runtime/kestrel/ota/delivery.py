"""Deliveries other than the CLI: a drop directory (USB stick) and MQTT payloads.

Both end in :func:`kestrel.ota.apply.apply_bundle`, exactly like ``kestrel ota apply``; a dropped
file goes through :func:`kestrel.ota.bundlefile.apply_bundle_file` (size and head checked before
it is read, with the daemon's ``ota.max_bundle`` as the limit).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._internal.fsutil import read_bytes
from ..errors import DataError, KestrelError
from .apply import AppliedBundle, HealthCheck, apply_bundle, record_rejection
from .bundle import Limits
from .bundlefile import apply_bundle_file, digest_fd, open_bundle
from .errors import BundleError
from .store import OtaDir, durable_write

if TYPE_CHECKING:  # the TPM counter module is imported by whoever builds one
    from ..ledger.recorder import RecordLog
    from .tpmcounter import TpmCounter

__all__ = ["scan_drop_dir", "apply_message", "BUNDLE_SUFFIX"]

BUNDLE_SUFFIX = ".kbundle"
_SEEN_MAX = 256


def apply_message(
    state_dir: str | os.PathLike[str],
    payload: bytes,
    *,
    ledger: RecordLog,
    now: float,
    health: HealthCheck | None = None,
    limits: Limits = Limits(),
    tpm: TpmCounter | None = None,
) -> AppliedBundle:
    """Apply a bundle received as an MQTT message payload (same checks as a file)."""
    return apply_bundle(
        state_dir, bytes(payload), ledger=ledger, now=now, source="mqtt", health=health, limits=limits, tpm=tpm
    )


def scan_drop_dir(
    state_dir: str | os.PathLike[str],
    drop_dir: str | os.PathLike[str],
    *,
    ledger: RecordLog,
    now: float,
    health: HealthCheck | None = None,
    limits: Limits = Limits(),
    tpm: TpmCounter | None = None,
) -> list[tuple[Path, AppliedBundle | KestrelError]]:
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
            fd, st = open_bundle(path)
        except BundleError as exc:
            key = f"{name}:{exc.code}"
            if key not in seen:
                results.append((path, exc))
                record_rejection(ledger, exc, sha256=None, size=0, source="drop", file=name)
                seen.append(key)
            continue
        except KestrelError as exc:
            results.append((path, exc))
            continue
        try:
            cheap = f"stat:{name}:{st.st_size}:{st.st_mtime_ns}"  # a file left on the stick: no re-hash per scan
            if cheap in seen:
                continue
            key = digest_fd(fd, st.st_size)  # bounded memory, whatever the file's size
            if key in seen:
                seen.append(cheap)
                continue
            try:
                results.append(
                    (
                        path,
                        apply_bundle_file(
                            state_dir,
                            path,
                            ledger=ledger,
                            now=now,
                            source="drop",
                            health=health,
                            limits=limits,
                            tpm=tpm,
                            opened=(fd, st),
                            sha256=key,
                        ),
                    )
                )
            except KestrelError as exc:
                results.append((path, exc))
            seen += [key, cheap]
        finally:
            os.close(fd)
    if results:
        ota.ensure()
        durable_write(seen_file, json.dumps(seen[-_SEEN_MAX:]).encode())
    return results


def _load_seen(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        obj = json.loads(read_bytes(path, what="drop directory state", max_size=1 << 20))
    except (ValueError, DataError):
        return []
    return [x for x in obj if isinstance(x, str)] if isinstance(obj, list) else []

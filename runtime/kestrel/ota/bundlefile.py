"""A bundle file applied in bounded memory: check its size, verify its head, only then read it.

Every file delivery (``kestrel ota apply FILE``, the drop directory) comes here. The file is
opened without following a symbolic link and checked with ``fstat`` before a byte is read:
not a regular file (FIFO, device, directory) or larger than the limit is refused at once.
Then at most :data:`~kestrel.ota.bundle.MAX_HEAD` bytes (~80 KiB) are read and the head is
verified (signatures, manifest, targets, expiry, anti-rollback counter, framing against the
file's size). Only a bundle whose head holds is read whole, and it is never larger than the
limit. Every refusal is an ``ota.rejected`` record with the file's size and sha256, hashed
in 1 MiB chunks (memory does not grow with the file).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .._internal.fsutil import open_nofollow
from ..errors import TransportError
from .apply import AppliedBundle, HealthCheck, apply_bundle, device_checks, record_rejection
from .bundle import MAX_HEAD, Limits, verify_head
from .errors import BundleError, BundleFormatError, TrustRootError
from .store import OtaDir

if TYPE_CHECKING:
    from ..ledger.recorder import RecordLog
    from .tpmcounter import TpmCounter

__all__ = ["apply_bundle_file", "open_bundle", "digest_fd", "CHUNK"]

CHUNK = 1 << 20


def open_bundle(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """(fd, fstat) of a bundle file: no symbolic link, a regular file (BundleFormatError otherwise)."""
    try:
        fd = open_nofollow(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleFormatError(f"{path} is a symbolic link; refused", code="not-regular-file") from None
        raise TransportError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BundleFormatError(
            f"{path} is not a regular file (device, FIFO or directory refused)", code="not-regular-file"
        )
    return fd, st


def digest_fd(fd: int, size: int) -> str:
    """Hex sha256 of the first ``size`` bytes of ``fd``, read in :data:`CHUNK`-byte pieces."""
    h, pos = hashlib.sha256(), 0
    while pos < size:
        chunk = os.pread(fd, min(CHUNK, size - pos), pos)
        if not chunk:
            break
        h.update(chunk)
        pos += len(chunk)
    return h.hexdigest()


def _read_all(fd: int, size: int) -> bytes:
    buf = bytearray(size)
    view, pos = memoryview(buf), 0
    while pos < size:
        n = os.preadv(fd, [view[pos:]], pos)
        if n == 0:
            raise BundleFormatError(f"bundle shrank from {size} to {pos} bytes while being read", code="truncated")
        pos += n
    if os.pread(fd, 1, size):
        raise BundleFormatError(f"bundle grew beyond {size} bytes while being read", code="oversize")
    return buf  # type: ignore[return-value]  # a bytearray stands in for bytes: no second copy


def apply_bundle_file(
    state_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    ledger: RecordLog,
    now: float,
    source: str = "cli",
    health: HealthCheck | None = None,
    limits: Limits = Limits(),
    tpm: TpmCounter | None = None,
    opened: tuple[int, os.stat_result] | None = None,
    sha256: str | None = None,
) -> AppliedBundle:
    """Verify and activate the bundle in ``path`` (see the module text); refusals are recorded.

    ``opened``: an (fd, fstat) from :func:`open_bundle` to use instead of opening ``path``
    (the caller keeps ownership of the descriptor); ``sha256``: the file's digest when the caller
    has hashed it already (a refusal then records it without a second pass over the file).
    """
    name = Path(path).name
    try:
        fd, st = opened if opened is not None else open_bundle(path)
    except BundleFormatError as exc:
        record_rejection(ledger, exc, sha256=None, size=0, source=source, file=name)
        raise
    try:
        size = st.st_size
        try:
            if size > limits.max_bundle:
                raise BundleFormatError(
                    f"{name} is {size} bytes, more than the limit of {limits.max_bundle}",
                    code="oversize",
                    hint="raise ota.max_bundle in the device config, or ship the model separately",
                )
            head = os.pread(fd, min(size, MAX_HEAD), 0)
            verify_head(head, size=size, now=now, limits=limits, **device_checks(OtaDir(state_dir), ledger))
        except (BundleError, TrustRootError) as exc:
            digest = sha256 if sha256 is not None else digest_fd(fd, size)
            record_rejection(ledger, exc, sha256=digest, size=size, source=source, file=name)
            raise
        data = _read_all(fd, size)
    finally:
        if opened is None:
            os.close(fd)
    return apply_bundle(state_dir, data, ledger=ledger, now=now, source=source, health=health, limits=limits, tpm=tpm)

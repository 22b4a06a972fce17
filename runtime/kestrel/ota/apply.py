"""Apply, roll back and inspect bundles on the device (shell around the pure verifier).

One path for every delivery (CLI file, drop directory, MQTT payload):
verify -> stage into the inactive slot (fsync) -> health-check -> switch the
pointer atomically (rename + dir fsync) -> raise the anti-rollback counter ->
record ``ota.applied``. Any refusal is recorded as ``ota.rejected`` and a failed
health check as ``ota.rollback``; the active slot is untouched in both cases.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.fsutil import fsync_dir, read_bytes
from ..errors import DataError, KestrelError, TransportError
from ..policy import Policy, parse_policy
from .bundle import Limits, VerifiedBundle, parse_manifest, verify_bundle
from .errors import BundleError, BundleHealthError, BundleRollbackError, TrustRootError
from .store import OtaDir, StepHook, _noop

if TYPE_CHECKING:  # the TPM counter module is imported by whoever builds one
    from ..ledger.recorder import Recorder, RecordLog, RecordReader
    from .tpmcounter import TpmCounter

__all__ = [
    "AppliedBundle",
    "apply_bundle",
    "rollback",
    "active_policy",
    "active_bundle",
    "ota_status",
    "current_counter",
    "HealthCheck",
    "record_rejection",
]

HealthCheck = Callable[[Path], Any]
MANIFEST_FILE = ".manifest.json"
SIGS_FILE = ".signatures.json"


@dataclass(frozen=True)
class AppliedBundle:
    digest: str  # sha256 of the manifest bytes
    version: str
    counter: int
    slot: str
    previous_slot: str | None
    policy_digest: str
    changed: bool = True  # False: this bundle was already active


def _ledger_max(ledger: RecordReader, field: str) -> int:
    latest = getattr(ledger, "latest", None)
    if callable(latest):  # the ledger keeps its newest record of each kind: no scan of the whole log
        rec = latest("ota.applied")  # counters only grow: an apply below the recorded counter is refused
        c = rec.body.get(field) if rec is not None and isinstance(rec.body, dict) else None
        return c if type(c) is int else 0
    best = 0
    for rec in ledger.records(kind="ota.applied"):
        c = rec.body.get(field) if isinstance(rec.body, dict) else None
        if type(c) is int and c > best:
            best = c
    return best


def current_counter(ota: OtaDir, ledger: RecordReader | None) -> tuple[int, str | None]:
    """The anti-rollback counter: the highest of counter.json, the active slot and the ledger."""
    try:
        counter, digest = ota.read_counter()
    except DataError:  # the ledger and the active slot still bind the counter
        counter, digest = 0, None
    active = _pointer_or_empty(ota)["active"]
    if active is not None:
        try:
            m = parse_manifest(read_bytes(ota.slot(active["slot"]) / MANIFEST_FILE, what="slot manifest"))
            if m.counter > counter:
                counter, digest = m.counter, active["digest"]
        except KestrelError:
            pass
    if ledger is not None:
        recorded = _ledger_max(ledger, "counter")
        if recorded > counter:
            counter, digest = recorded, None
    return counter, digest


def _record(ledger: Recorder | None, kind: str, body: dict) -> None:
    if ledger is not None:
        ledger.append(kind, body)


def apply_bundle(
    state_dir: str | os.PathLike[str],
    bundle_bytes: bytes,
    *,
    ledger: RecordLog,
    now: float,
    source: str = "cli",
    health: HealthCheck | None = None,
    health_window: float = 30.0,
    on_step: StepHook | None = None,
    limits: Limits = Limits(),
    tpm: TpmCounter | None = None,
) -> AppliedBundle:
    """Verify and activate a bundle, or raise a BundleError (recorded in the ledger).

    ``tpm``: a TPM NV counter guarding against a restored older state (docs/bundle-format.md §5).
    """
    step = on_step or _noop
    ota = OtaDir(state_dir)
    with ota.locked():
        ota.recover()
        try:
            epoch = _check_epoch(ota, ledger, tpm)
            vb = verify_bundle(bundle_bytes, now=now, limits=limits, **device_checks(ota, ledger))
            policy = _load_policy(vb.content(vb.manifest.policy.name), vb.manifest.policy.name)
        except (BundleError, TrustRootError) as exc:
            _reject(ledger, exc, bundle_bytes, source)
            raise
        active = _pointer_or_empty(ota)["active"]
        if active is not None and active["digest"] == vb.digest:
            return AppliedBundle(
                vb.digest, vb.manifest.version, vb.manifest.counter, active["slot"], None, policy.digest, changed=False
            )
        target = "b" if active is not None and active["slot"] == "a" else "a"
        try:
            _stage(ota, vb, target, step)
        except OSError as exc:
            import shutil  # rarely needed: keep it (and bz2/lzma) out of an idle daemon

            shutil.rmtree(ota.staging, ignore_errors=True)
            raise TransportError(
                f"cannot stage the bundle in {ota.slots}: {exc.strerror or exc}",
                hint="check free space and permissions; the active bundle is unchanged",
            ) from None
        try:
            _health_check(ota.slot(target), vb, health, health_window)
        except BundleHealthError as exc:
            _discard(ota, target)
            _record(
                ledger,
                "ota.rollback",
                {
                    "reason": exc.code,
                    "message": exc.message,
                    "bundle": vb.digest,
                    "counter": vb.manifest.counter,
                    "slot": active["slot"] if active else None,
                    "source": source,
                },
            )
            raise
        ota.write_pointer({"slot": target, "digest": vb.digest}, active, step)
        step("counter")
        new_epoch = None if epoch is None else epoch + 1
        ota.write_counter(vb.manifest.counter, vb.digest, step, tpm=new_epoch)
        if tpm is not None:
            step("tpm-increment")
            tpm.increment()
        step("ledger")
        body = {
            "bundle": vb.digest,
            "version": vb.manifest.version,
            "counter": vb.manifest.counter,
            "slot": target,
            "previous_slot": active["slot"] if active else None,
            "policy": policy.digest,
            "signed_by": list(vb.signed_by),
            "source": source,
        }
        if new_epoch is not None:
            body["tpm"] = new_epoch
        _record(ledger, "ota.applied", body)
        return AppliedBundle(
            vb.digest,
            vb.manifest.version,
            vb.manifest.counter,
            target,
            active["slot"] if active else None,
            policy.digest,
        )


def device_checks(ota: OtaDir, ledger: RecordLog) -> dict[str, Any]:
    """What this device verifies a bundle against: its trust root, AgentID, groups and counter."""
    counter, cdigest = current_counter(ota, ledger)
    return {
        "root": ota.trust_root(),
        "agent_id": ledger.public_key.did,
        "groups": ota.groups(),
        "counter": counter,
        "counter_digest": cdigest,
    }


def _check_epoch(ota: OtaDir, ledger: RecordReader, tpm: TpmCounter | None) -> int | None:
    """The TPM counter value, after checking that the state is not older than it."""
    if tpm is None:
        return None
    now = tpm.read()
    try:
        in_file = ota.read_tpm_epoch()
    except DataError:
        in_file = 0
    recorded = max(in_file, _ledger_max(ledger, "tpm"))
    if recorded < now:
        raise BundleRollbackError(
            f"the device's OTA state records TPM epoch {recorded} but the TPM counter is at {now}: "
            "the state directory was restored from an older copy",
            code="state-rollback",
            hint="restore the newest state directory, or re-provision the device",
        )
    return now


def _pointer_or_empty(ota: OtaDir) -> dict:
    """The slot pointer; a corrupt one counts as "nothing active" so that a new bundle repairs
    it (meanwhile ``active_policy`` raises and the engine denies everything)."""
    try:
        return ota.read_pointer()
    except DataError:
        return {"active": None, "previous": None}


def _reject(ledger: Recorder, exc: BundleError | TrustRootError, data: bytes, source: str) -> None:
    record_rejection(ledger, exc, sha256=hashlib.sha256(data).hexdigest(), size=len(data), source=source)


def record_rejection(
    ledger: Recorder,
    exc: BundleError | TrustRootError,
    *,
    sha256: str | None,
    size: int,
    source: str,
    file: str | None = None,
) -> None:
    """``ota.rejected``: every refused bundle, whatever refused it (docs/bundle-format.md)."""
    body: dict[str, Any] = {
        "reason": exc.code,
        "message": exc.message[:500],
        "sha256": sha256,
        "size": size,
        "source": source,
    }
    if file is not None:
        body["file"] = file
    _record(ledger, "ota.rejected", body)


def _load_policy(data: bytes, name: str) -> Policy:
    try:
        return parse_policy(data, source=name)
    except DataError as exc:
        raise BundleHealthError(f"policy in bundle does not load: {exc.message}", code="bad-policy") from None


def _stage(ota: OtaDir, vb: VerifiedBundle, target: str, step: StepHook) -> None:
    staging = ota.staging
    step("mkdir:staging")
    os.mkdir(staging, 0o700)
    files = [(e.name, data) for e, data in vb.contents]
    files += [(SIGS_FILE, vb.signatures), (MANIFEST_FILE, vb.manifest_bytes)]
    for name, data in files:
        step(f"write:{name}")
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            step(f"fsync:{name}")
            os.fsync(fd)
        finally:
            os.close(fd)
    step("fsync-dir:staging")
    fsync_dir(staging)
    _discard(ota, target, step)
    step("rename:staging")
    os.rename(staging, ota.slot(target))
    step("fsync-dir:slots")
    fsync_dir(ota.slots)


def _discard(ota: OtaDir, slot: str, step: StepHook = _noop) -> None:
    path = ota.slot(slot)
    if path.exists():
        trash = ota.slots / f".old-{slot}"
        step(f"rename:old-{slot}")
        os.rename(path, trash)
        fsync_dir(ota.slots)
        import shutil  # rarely needed: keep it (and bz2/lzma) out of an idle daemon

        shutil.rmtree(trash, ignore_errors=True)


def _file_digest(path: Path) -> tuple[int, str]:
    """(size, hex sha256) of a staged file, read in 1 MiB pieces (a model is not held twice)."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise TransportError(f"cannot read staged content {path}: {exc.strerror or exc}") from None
    return size, h.hexdigest()


def _health_check(slot: Path, vb: VerifiedBundle, health: HealthCheck | None, window: float) -> None:
    for e, _ in vb.contents:
        size, digest = _file_digest(slot / e.name)
        if size != e.size or digest != e.sha256:
            raise BundleHealthError(f"staged '{e.name}' does not match the manifest", code="health-hash")
    _load_policy(read_bytes(slot / vb.manifest.policy.name, what="staged policy"), vb.manifest.policy.name)
    if health is None:
        return
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(health(slot))
        except BaseException as exc:  # noqa: BLE001 - any failure of the callback is unhealthy
            result.append(exc)

    t = threading.Thread(target=run, name="kestrel-ota-health", daemon=True)
    t.start()
    t.join(window)
    if t.is_alive():
        raise BundleHealthError(f"runtime health check did not finish within {window:g} s", code="health-timeout")
    if isinstance(result[0], BaseException) or result[0] is False:
        raise BundleHealthError(f"runtime health check failed: {result[0]!r}", code="health-failed")


def _slot_bundle(ota: OtaDir, ref: dict) -> tuple[Policy, Any]:
    """Load a slot, checking it against the digest in the pointer and its manifest hashes."""
    slot = ota.slot(ref["slot"])
    mbytes = read_bytes(slot / MANIFEST_FILE, what="slot manifest", max_size=64 * 1024)
    if hashlib.sha256(mbytes).hexdigest() != ref["digest"]:
        raise DataError(
            f"slot {ref['slot']} does not hold bundle {ref['digest'][:16]}",
            hint="the slot was altered or overwritten; apply a bundle again",
        )
    manifest = parse_manifest(mbytes)
    entry = manifest.policy
    pbytes = read_bytes(slot / entry.name, what="slot policy", max_size=entry.size)
    if hashlib.sha256(pbytes).hexdigest() != entry.sha256:
        raise DataError(f"policy in slot {ref['slot']} does not match its manifest", hint="apply the bundle again")
    return parse_policy(pbytes, source=f"{slot / entry.name}"), manifest


def active_policy(state_dir: str | os.PathLike[str]) -> tuple[Policy, str] | None:
    """(policy, bundle digest) of the active slot, or None when no bundle was applied."""
    ota = OtaDir(state_dir)
    active = ota.read_pointer()["active"]
    if active is None:
        return None
    policy, _ = _slot_bundle(ota, active)
    return policy, active["digest"]


def active_bundle(state_dir: str | os.PathLike[str]) -> dict | None:
    ota = OtaDir(state_dir)
    active = ota.read_pointer()["active"]
    if active is None:
        return None
    _, m = _slot_bundle(ota, active)
    return {
        "slot": active["slot"],
        "digest": active["digest"],
        "version": m.version,
        "counter": m.counter,
        "expires": m.expires,
        "contents": [e.name for e in m.contents],
    }


def rollback(
    state_dir: str | os.PathLike[str], *, ledger: Recorder, reason: str = "operator", on_step: StepHook | None = None
) -> AppliedBundle:
    """Make the previous slot active again (it must be intact). The counter is not lowered."""
    ota = OtaDir(state_dir)
    with ota.locked():
        ota.recover()
        ptr = ota.read_pointer()
        prev, active = ptr["previous"], ptr["active"]
        if prev is None or active is None:
            raise BundleError(
                "there is no previous bundle to roll back to",
                code="no-previous",
                hint="`kestrel ota status` shows the slots",
            )
        try:
            policy, m = _slot_bundle(ota, prev)
        except KestrelError as exc:
            raise BundleError(f"the previous slot is not intact: {exc.message}", code="previous-damaged") from None
        ota.write_pointer(prev, active, on_step or _noop)
        _record(
            ledger,
            "ota.rollback",
            {
                "reason": reason,
                "bundle": prev["digest"],
                "counter": m.counter,
                "slot": prev["slot"],
                "from_slot": active["slot"],
                "from_bundle": active["digest"],
            },
        )
        return AppliedBundle(prev["digest"], m.version, m.counter, prev["slot"], active["slot"], policy.digest)


def ota_status(state_dir: str | os.PathLike[str], *, ledger: RecordReader | None = None, now: float) -> dict:
    ota = OtaDir(state_dir)
    counter, _ = current_counter(ota, ledger)
    out: dict[str, Any] = {"counter": counter, "active": None, "previous": None}
    try:
        ptr = ota.read_pointer()
    except DataError as exc:
        ptr, out["pointer_error"] = {"active": None, "previous": None}, exc.message
    try:
        root = ota.trust_root()
        out["trust_root"] = {"version": root.version, "threshold": root.threshold, "owners": list(root.owners)}
    except KestrelError as exc:
        out["trust_root"] = None
        out["trust_root_error"] = exc.message
    for key in ("active", "previous"):
        ref = ptr[key]
        if ref is None:
            continue
        try:
            _, m = _slot_bundle(ota, ref)
            out[key] = {
                "slot": ref["slot"],
                "bundle": ref["digest"],
                "version": m.version,
                "counter": m.counter,
                "expired": now >= m.expires,
                "contents": [e.name for e in m.contents],
            }
        except KestrelError as exc:
            out[key] = {"slot": ref["slot"], "bundle": ref["digest"], "error": exc.message}
    return out

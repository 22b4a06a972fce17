"""On-device OTA state (shell): layout, trust root file, A/B pointer, counter, crash steps.

Layout of ``STATE/ota/`` (docs/bundle-format.md, "Device state"):

    root.json        current trust root (DSSE envelope)
    groups.json      optional JSON list of this device's group names
    active.json      {"active": {"slot", "digest"}, "previous": {...} | null}
    counter.json     {"counter": N, "digest": hex}  (anti-rollback, also in the ledger)
    slots/a, slots/b one verified bundle each: .manifest.json, .signatures.json, contents
    .lock            flock held while applying or rolling back
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._internal.fsutil import ensure_private_dir, fsync_dir, read_bytes
from .._internal.paths import StateLayout
from ..errors import DataError, TransportError
from .errors import TrustRootError
from .root import TrustRoot, parse_root, root_envelope, root_payload, verify_rotation

__all__ = ["OtaDir", "StepHook", "durable_write"]

StepHook = Callable[[str], None]
SLOTS = ("a", "b")


def _noop(step: str) -> None:
    return None


def durable_write(path: Path, data: bytes, *, step: StepHook = _noop, name: str = "") -> None:
    """atomic_write with a named hook before each write, fsync and rename (for crash tests)."""
    tag = name or path.name
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        step(f"write:{tag}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            step(f"fsync:{tag}")
            os.fsync(fd)
        finally:
            os.close(fd)
        step(f"rename:{tag}")
        os.replace(tmp, path)
        step(f"fsync-dir:{tag}")
        fsync_dir(path.parent)
    except OSError as exc:
        raise TransportError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="check that the state directory is writable and the disk is not full",
        ) from None


class OtaDir:
    """Paths and small files of ``STATE/ota``."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state = Path(state_dir)
        self.root = StateLayout(self.state).ota
        self.slots = self.root / "slots"
        self.staging = self.slots / ".staging"
        self.pointer = self.root / "active.json"
        self.counter_file = self.root / "counter.json"
        self.root_file = self.root / "root.json"

    def ensure(self) -> None:
        ensure_private_dir(self.state)
        ensure_private_dir(self.root)
        ensure_private_dir(self.slots)

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Remove what an interrupted apply left behind (staging, half-deleted slots, temp files)."""
        if not self.slots.exists():
            return
        for p in list(self.slots.iterdir()):
            if p.name.startswith("."):
                import shutil  # rarely needed: keep it (and bz2/lzma) out of an idle daemon

                shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    def slot(self, name: str) -> Path:
        return self.slots / name

    # -- JSON files -----------------------------------------------------------
    def _json(self, path: Path, what: str) -> object | None:
        if not path.exists():
            return None
        try:
            return json.loads(read_bytes(path, what=what, max_size=64 * 1024))
        except ValueError:
            raise DataError(
                f"{what} {path} is corrupt", hint="restore it from a backup or re-provision the trust root"
            ) from None

    def read_pointer(self) -> dict:
        obj = self._json(self.pointer, "OTA slot pointer")
        if obj is None:
            return {"active": None, "previous": None}
        if (
            not isinstance(obj, dict)
            or not _slot_ref_ok(obj.get("active"))
            or not (obj.get("previous") is None or _slot_ref_ok(obj.get("previous")))
        ):
            raise DataError(f"OTA slot pointer {self.pointer} is malformed")
        return obj

    def write_pointer(self, active: dict | None, previous: dict | None, step: StepHook = _noop) -> None:
        data = json.dumps({"active": active, "previous": previous}, sort_keys=True).encode()
        durable_write(self.pointer, data, step=step, name="active.json")

    def read_counter(self) -> tuple[int, str | None]:
        obj = self._counter_obj()
        return (obj["counter"], obj.get("digest")) if obj else (0, None)

    def read_tpm_epoch(self) -> int:
        obj = self._counter_obj()
        return obj.get("tpm", 0) if obj else 0

    def _counter_obj(self) -> dict | None:
        obj = self._json(self.counter_file, "OTA counter")
        if obj is None:
            return None
        if not isinstance(obj, dict) or type(obj.get("counter")) is not int or type(obj.get("tpm", 0)) is not int:
            raise DataError(f"OTA counter {self.counter_file} is malformed")
        return obj

    def write_counter(self, counter: int, digest: str, step: StepHook = _noop, *, tpm: int | None = None) -> None:
        obj: dict = {"counter": counter, "digest": digest}
        if tpm is not None:
            obj["tpm"] = tpm
        data = json.dumps(obj, sort_keys=True).encode()
        durable_write(self.counter_file, data, step=step, name="counter.json")

    def groups(self) -> tuple[str, ...]:
        obj = self._json(self.root / "groups.json", "device groups")
        if obj is None:
            return ()
        if not isinstance(obj, list) or not all(isinstance(g, str) for g in obj):
            raise DataError(f"{self.root / 'groups.json'} must be a JSON list of group names")
        return tuple(obj)

    def write_groups(self, groups: Sequence[str]) -> None:
        self.ensure()
        durable_write(self.root / "groups.json", json.dumps(sorted(set(groups))).encode())

    # -- trust root -------------------------------------------------------------
    def trust_root(self) -> TrustRoot:
        """The current root; installs version 1 from identity/provisioning.json on first use."""
        if self.root_file.exists():
            return parse_root(read_bytes(self.root_file, what="trust root", max_size=64 * 1024))
        prov = StateLayout(self.state).identity / "provisioning.json"
        obj = self._json(prov, "provisioning file")
        if obj is None:
            raise TrustRootError(
                f"no owner trust root in {self.root}",
                code="no-root",
                hint="provision one with `kestrel trust init --owner OWNER_KEY` "
                "(or `kestrel init-agent --owner OWNER_KEY`)",
            )
        if not isinstance(obj, dict) or not isinstance(obj.get("owners"), list):
            raise TrustRootError(f'{prov} must hold {{"owners": [...], "threshold": k}}', code="root-malformed")
        return self.init_root(obj["owners"], obj.get("threshold", 1))

    def init_root(
        self, owners: Sequence[str], threshold: int, *, bls: Mapping[str, Mapping[str, str]] | None = None
    ) -> TrustRoot:
        if self.root_file.exists():
            raise TrustRootError(
                f"a trust root already exists in {self.root_file}",
                code="root-exists",
                hint="change it with `kestrel trust rotate` (needs the current owners' signatures)",
            )
        self.ensure()
        env = root_envelope(root_payload(list(owners), threshold, 1, bls=bls))
        root = parse_root(env)
        durable_write(self.root_file, env)
        return root

    def rotate_root(self, envelope: bytes) -> tuple[TrustRoot, TrustRoot]:
        """Verify ``envelope`` against the current root and install it. Returns (old, new)."""
        old = self.trust_root()
        new = verify_rotation(old, envelope)
        history = ensure_private_dir(self.root / "roots")
        durable_write(history / f"{old.version}.json", old.envelope)
        durable_write(self.root_file, new.envelope)
        return old, new


def _slot_ref_ok(ref: object) -> bool:
    return isinstance(ref, dict) and ref.get("slot") in SLOTS and isinstance(ref.get("digest"), str)

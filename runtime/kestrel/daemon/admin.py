"""Owner operations the daemon carries out with its own ledger: OTA apply and rollback, trust rotation.

While the daemon runs it is the ledger's only writer (``flock``), so ``kestrel ota apply``,
``kestrel set-policy``, ``kestrel ota rollback`` and ``kestrel trust apply|rotate`` send their
bytes over the control socket and the daemon calls the same :mod:`kestrel.ota` functions as
the CLI would, from a worker thread. Every delivery (control socket, MQTT topic, drop
directory) passes ``tpm=device_tpm_counter(state)`` and the runtime's health check, and
tells the policy engine that the active bundle may have changed, so the next decision
uses the new policy without the engine stat'ing the pointer on every decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KestrelError

if TYPE_CHECKING:
    from ..ledger.recorder import Recorder, RecordLog

__all__ = ["OtaService", "applied_json", "install_root"]

log = logging.getLogger("kestrel.daemon.ota")
_UNSET: Any = object()


def applied_json(res: Any) -> dict[str, Any]:
    """An :class:`kestrel.ota.apply.AppliedBundle` as the control socket returns it."""
    return {
        "bundle": res.digest,
        "version": res.version,
        "counter": res.counter,
        "slot": res.slot,
        "previous_slot": res.previous_slot,
        "policy": res.policy_digest,
        "changed": res.changed,
    }


def install_root(state_dir: str | os.PathLike[str], envelope: bytes, *, ledger: Recorder) -> dict[str, Any]:
    """Install the next trust root (verified against the current one) and record ``trust.rotated``;
    a refused one is recorded as ``trust.rejected`` (the reason code, and the digest of the bytes)."""
    from ..ota.errors import TrustRootError
    from ..ota.store import OtaDir

    try:
        old, new = OtaDir(state_dir).rotate_root(envelope)
    except TrustRootError as exc:
        ledger.append(
            "trust.rejected",
            {
                "reason": exc.code,
                "message": exc.message[:500],
                "size": len(envelope),
                "sha256": hashlib.sha256(envelope).hexdigest(),
            },
        )
        raise
    body = {"from_version": old.version, "version": new.version, "threshold": new.threshold, "owners": list(new.owners)}
    ledger.append("trust.rotated", body)
    return body


class OtaService:
    """Runs kestrel.ota operations against the daemon's ledger, one at a time, off the loop."""

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str],
        ledger: RecordLog,
        policy: Any,
        healthy: Callable[[], str | None],
        on_recorded: Callable[[], None],
        clock: Callable[[], float],
        max_bundle: Callable[[], int] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._max_bundle = max_bundle
        self.ledger = ledger
        self.policy = policy
        self._healthy = healthy
        self._on_recorded = on_recorded
        self._clock = clock
        self._tpm: Any = _UNSET
        self._lock = asyncio.Lock()

    def tpm(self) -> Any:
        """The device's TPM counter (TPM identities), else None; looked up once."""
        if self._tpm is _UNSET:
            from ..ota.tpmcounter import device_tpm_counter

            try:
                self._tpm = device_tpm_counter(self.state_dir)
            except KestrelError as exc:  # no identity in STATE (tests inject a ledger): file counter only
                log.debug("no TPM counter: %s", exc.message)
                self._tpm = None
        return self._tpm

    def limits(self) -> Any:
        """The bundle size limits of the device config (``ota.max_bundle``) for every delivery."""
        from ..ota.bundle import Limits

        if self._max_bundle is None:
            return Limits()
        size = self._max_bundle()
        return Limits(max_bundle=size, max_entry=min(size, Limits.max_entry))

    def health(self, slot: Path) -> bool:
        """The runtime's health check for a staged bundle (runs in the apply's thread)."""
        why = self._healthy()
        if why is not None:
            raise KestrelError(f"the runtime is unhealthy: {why}")
        return True

    def _refresh_policy(self) -> None:
        invalidate = getattr(self.policy, "invalidate", None)
        if invalidate is not None:
            invalidate()

    async def _run(self, fn: Callable[[], Any], *, refresh: bool = True) -> Any:
        def run() -> Any:
            try:
                return fn()
            finally:  # applied, rolled back or refused: the engine re-reads the active policy now
                if refresh:
                    self._refresh_policy()

        async with self._lock:
            try:
                return await asyncio.get_running_loop().run_in_executor(None, run)
            finally:
                self._on_recorded()

    # -- operations ------------------------------------------------------------------------------
    async def apply(self, data: bytes, *, source: str) -> dict[str, Any]:
        """Verify and activate a bundle (raises the BundleError kestrel.ota raised; it is recorded)."""
        from ..ota import apply_bundle

        res = await self._run(
            lambda: apply_bundle(
                self.state_dir,
                data,
                ledger=self.ledger,
                now=self._clock(),
                source=source,
                health=self.health,
                tpm=self.tpm(),
                limits=self.limits(),
            )
        )
        return applied_json(res)

    async def apply_message(self, payload: bytes, *, source: str) -> None:
        """A bundle from the MQTT OTA topic: applied or rejected (both recorded), never raises."""
        from ..ota import apply_message

        try:
            res = await self._run(
                lambda: apply_message(
                    self.state_dir,
                    payload,
                    ledger=self.ledger,
                    now=self._clock(),
                    health=self.health,
                    tpm=self.tpm(),
                    limits=self.limits(),
                )
            )
            log.info("applied OTA bundle from %s: %s", source, applied_json(res))
        except KestrelError as exc:
            log.error("rejected OTA bundle from %s: %s", source, exc.message)

    async def rollback(self, *, reason: str) -> dict[str, Any]:
        from ..ota import rollback

        res = await self._run(lambda: rollback(self.state_dir, ledger=self.ledger, reason=reason))
        return applied_json(res)

    async def rotate_root(self, envelope: bytes) -> dict[str, Any]:
        return await self._run(lambda: install_root(self.state_dir, envelope, ledger=self.ledger))

    async def scan(self, drop: Path) -> None:
        """Apply the new bundles in the drop directory (a USB stick in the field)."""
        if not _has_bundles(drop):  # the common case: keep the OTA code (~1.3 MB) out of an idle daemon
            return
        from ..ota import scan_drop_dir

        def scan() -> Any:
            found = scan_drop_dir(
                self.state_dir,
                drop,
                ledger=self.ledger,
                now=self._clock(),
                health=self.health,
                tpm=self.tpm(),
                limits=self.limits(),
            )
            if found:  # most scans find nothing: no need to re-read the policy then
                self._refresh_policy()
            return found

        try:
            results = await self._run(scan, refresh=False)
        except KestrelError as exc:
            log.error("scanning the OTA drop directory %s: %s", drop, exc.message)
            return
        for path, res in results:
            if isinstance(res, KestrelError):
                log.error("OTA bundle %s rejected: %s", path.name, res.message)
            else:
                log.info("OTA bundle %s applied", path.name)


def _has_bundles(drop: Path) -> bool:
    """Whether ``drop`` holds a candidate bundle name (``*.kbundle``, not hidden); cheap, no OTA import."""
    try:
        with os.scandir(drop) as entries:
            return any(e.name.endswith(".kbundle") and not e.name.startswith(".") for e in entries)
    except OSError:
        return False

"""Anti-rollback epoch in a TPM NV counter (shell; tpm2-pytss imported only here, lazily).

The TPM counter cannot be decreased, even with owner authorization. Each applied
bundle increments it once; the value is written first to ``counter.json`` and
the ``ota.applied`` record (so a crash between the two leaves the state ahead of
the TPM, never behind). A device state whose recorded epoch is *below* the TPM's
was restored from an older copy: applying is refused (``state-rollback``).
NV index: owner-defined handle ``0x01304B53``, TPM_NT_COUNTER, 8 bytes,
OWNERREAD | OWNERWRITE | NO_DA, empty owner authorization.
"""

from __future__ import annotations

from typing import Any

from ..errors import TransportError
from ..identity.tpm import connect, load_tss

__all__ = ["TpmCounter", "NV_INDEX", "device_tpm_counter"]

NV_INDEX = 0x01304B53
_RC_NV_UNINITIALIZED = 0x14A


class TpmCounter:
    def __init__(self, tcti: str, *, index: int = NV_INDEX) -> None:
        self.tcti = tcti
        self.index = index

    def _handle(self, t: Any, ectx: Any) -> Any:
        C, T = t.constants, t.types
        try:
            return ectx.tr_from_tpmpublic(self.index)
        except t.TSS2_Exception:
            attrs = (
                C.TPMA_NV.OWNERWRITE
                | C.TPMA_NV.OWNERREAD
                | C.TPMA_NV.NO_DA
                | (C.TPM2_NT.COUNTER << C.TPMA_NV.TPM2_NT_SHIFT)
            )
            pub = T.TPM2B_NV_PUBLIC(
                nvPublic=T.TPMS_NV_PUBLIC(
                    nvIndex=self.index, nameAlg=C.TPM2_ALG.SHA256, attributes=attrs, authPolicy=b"", dataSize=8
                )
            )
            return ectx.nv_define_space(None, pub, C.ESYS_TR.OWNER)

    def _error(self, exc: Exception) -> TransportError:
        return TransportError(
            f"TPM NV counter {self.index:#x} via {self.tcti!r}: {exc}",
            hint="the owner hierarchy must have an empty authorization",
        )

    def read(self) -> int:
        """The current value (0 before the first increment); defines the index if needed."""
        t = load_tss()
        ectx = connect(t, self.tcti)
        try:
            h = self._handle(t, ectx)
            return int.from_bytes(bytes(ectx.nv_read(h, 8, 0, t.constants.ESYS_TR.OWNER)), "big")
        except t.TSS2_Exception as exc:
            if int(exc.rc) & 0xFFF == _RC_NV_UNINITIALIZED:
                return 0
            raise self._error(exc) from None
        finally:
            ectx.close()

    def increment(self) -> int:
        t = load_tss()
        ectx = connect(t, self.tcti)
        try:
            h = self._handle(t, ectx)
            ectx.nv_increment(h, t.constants.ESYS_TR.OWNER)
            return int.from_bytes(bytes(ectx.nv_read(h, 8, 0, t.constants.ESYS_TR.OWNER)), "big")
        except t.TSS2_Exception as exc:
            raise self._error(exc) from None
        finally:
            ectx.close()


def device_tpm_counter(state_dir: Any) -> TpmCounter | None:
    """The TPM counter of a device whose identity lives in a TPM; None for file keystores."""
    from ..identity import load_identity
    from ..identity.tpm import resolve_tcti

    identity = load_identity(state_dir)
    if identity.backend != "tpm":
        return None
    return TpmCounter(resolve_tcti(identity.tcti))

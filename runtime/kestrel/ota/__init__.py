"""Owner trust root and signed bundles: verify (pure), apply into A/B slots (shell).

Pure: :mod:`.bundle` (container, ``verify_bundle``), :mod:`.root` (trust root,
rotation), :mod:`.signing` (DSSE PAE, thresholds). Shell: :mod:`.apply`
(``apply_bundle``, ``rollback``, ``active_policy``), :mod:`.delivery` (drop
directory, MQTT payloads), :mod:`.store` (``STATE/ota`` files), :mod:`.owner`.
"""

from __future__ import annotations

from .apply import AppliedBundle, active_bundle, active_policy, apply_bundle, ota_status, rollback
from .bundle import Limits, Manifest, VerifiedBundle, build_manifest, encode_bundle, sign_bundle, verify_bundle
from .delivery import apply_message, scan_drop_dir
from .errors import (
    BundleContentError,
    BundleError,
    BundleExpiredError,
    BundleFormatError,
    BundleHealthError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTargetError,
    TrustRootError,
)
from .root import TrustRoot, parse_root, verify_rotation
from .store import OtaDir

__all__ = [
    "AppliedBundle", "BundleContentError", "BundleError", "BundleExpiredError", "BundleFormatError",
    "BundleHealthError", "BundleRollbackError", "BundleSignatureError", "BundleTargetError", "Limits",
    "Manifest", "OtaDir", "TrustRoot", "TrustRootError", "VerifiedBundle", "active_bundle", "active_policy",
    "apply_bundle", "apply_message", "build_manifest", "encode_bundle", "ota_status", "parse_root",
    "rollback", "scan_drop_dir", "sign_bundle", "verify_bundle", "verify_rotation",
]

"""Owner trust root and signed bundles: verify (pure), apply into A/B slots (shell).

Pure: :mod:`.bundle` (container, ``verify_bundle``), :mod:`.root` (trust root,
rotation), :mod:`.signing` (DSSE PAE, thresholds). Shell: :mod:`.apply`
(``apply_bundle``, ``rollback``, ``active_policy``), :mod:`.source` (``policy_source``: the
active slot's policy, for the policy engine), :mod:`.delivery` (drop
directory, MQTT payloads), :mod:`.store` (``STATE/ota`` files), :mod:`.owner`.
"""

from __future__ import annotations

from .._internal.lazy import lazy_exports

# Names are loaded on first use (PEP 562): the policy engine only needs ``policy_source``, and an
# idle daemon should not carry the bundle builder, the drop-directory scanner and the TPM counter.
_EXPORTS = {
    "apply": ("AppliedBundle", "active_bundle", "active_policy", "apply_bundle", "ota_status", "rollback"),
    "bundle": (
        "Limits",
        "Manifest",
        "VerifiedBundle",
        "build_manifest",
        "encode_bundle",
        "sign_bundle",
        "verify_bundle",
        "verify_head",
    ),
    "bundlefile": ("apply_bundle_file",),
    "delivery": ("apply_message", "scan_drop_dir"),
    "errors": (
        "BundleContentError",
        "BundleError",
        "BundleExpiredError",
        "BundleFormatError",
        "BundleHealthError",
        "BundleRollbackError",
        "BundleSignatureError",
        "BundleTargetError",
        "TrustRootError",
    ),
    "root": ("TrustRoot", "parse_root", "verify_rotation"),
    "source": ("ActiveSlotSource", "policy_source"),
    "store": ("OtaDir",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


__getattr__ = lazy_exports(__name__, globals(), _WHERE)


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "AppliedBundle",
    "BundleContentError",
    "BundleError",
    "BundleExpiredError",
    "BundleFormatError",
    "BundleHealthError",
    "BundleRollbackError",
    "BundleSignatureError",
    "BundleTargetError",
    "Limits",
    "Manifest",
    "OtaDir",
    "TrustRoot",
    "TrustRootError",
    "VerifiedBundle",
    "active_bundle",
    "active_policy",
    "apply_bundle",
    "apply_bundle_file",
    "apply_message",
    "build_manifest",
    "encode_bundle",
    "ota_status",
    "parse_root",
    "ActiveSlotSource",
    "policy_source",
    "rollback",
    "scan_drop_dir",
    "sign_bundle",
    "verify_bundle",
    "verify_rotation",
]

"""Every attack TUF names, and malformed bundles: refused with a specific code, active policy
untouched, and the refusal recorded in the ledger."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct

import pytest

from kestrel.ota import Limits, active_policy, apply_bundle, ota_status, scan_drop_dir
from kestrel.ota.build import build_bundle_files
from kestrel.ota.bundle import MAGIC, encode_bundle, format_time, sign_bundle
from kestrel.ota.errors import (
    BundleContentError,
    BundleError,
    BundleExpiredError,
    BundleFormatError,
    BundleRollbackError,
    BundleSignatureError,
    BundleTargetError,
)
from kestrel.ota.root import root_envelope, root_payload

from .conftest import POLICY_V1, Device

POLICY_A = b"actions: [send_email]\n"
POLICY_B = b"actions: [delete_all]\n"


@pytest.fixture
def installed(device: Device) -> Device:
    apply_bundle(device.state, device.bundle(counter=1, policy=POLICY_V1), ledger=device.ledger, now=device.now)
    return device


def refused(
    dev: Device,
    data: bytes,
    exc_type: type[BundleError],
    code: str,
    *,
    limits: Limits = Limits(),
    now: float | None = None,
) -> BundleError:
    before = active_policy(dev.state)
    n_before = len(dev.kinds("ota.rejected"))
    with pytest.raises(exc_type) as info:
        apply_bundle(dev.state, data, ledger=dev.ledger, now=dev.now if now is None else now, limits=limits)
    assert info.value.code == code, info.value
    after = active_policy(dev.state)
    assert (after[1] if after else None) == (before[1] if before else None)
    rejected = dev.kinds("ota.rejected")
    assert len(rejected) == n_before + 1
    assert rejected[-1]["reason"] == code
    assert rejected[-1]["sha256"] == hashlib.sha256(data).hexdigest()
    return info.value


def raw_bundle(dev: Device, manifest: dict, contents: list[bytes], signers=None) -> bytes:
    """A bundle around a hand-written manifest, signed like a real one (bypasses the builder)."""
    mbytes = json.dumps(manifest).encode()
    data = encode_bundle(mbytes, b"[]", contents)
    for s in signers or dev.owners[:1]:
        data = sign_bundle(data, s)
    return data


def manifest_for(dev: Device, entries: list[dict], counter: int = 5) -> dict:
    return {
        "_type": "kestrel.bundle",
        "format": 1,
        "version": "x",
        "counter": counter,
        "created": format_time(dev.now),
        "expires": format_time(dev.now + 3600),
        "targets": {"agents": [dev.agent], "groups": []},
        "contents": entries,
    }


def entry(name: str, data: bytes, role: str = "policy", **extra) -> dict:
    return {"name": name, "role": role, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **extra}


# -- the TUF attacks ---------------------------------------------------------
def test_arbitrary_installation_unsigned_and_untrusted_key(installed: Device) -> None:
    refused(installed, installed.bundle(counter=2, signers=[]), BundleSignatureError, "threshold")
    refused(installed, installed.bundle(counter=2, signers=[installed.owners[1]]), BundleSignatureError, "threshold")


def test_arbitrary_installation_signature_from_other_payload_type(installed: Device) -> None:
    # A valid owner signature over a trust root cannot be replayed as one over a manifest.
    from kestrel.ota.root import sign_root

    good = installed.bundle(counter=2, signers=[])
    env = json.loads(
        sign_root(root_envelope(root_payload([installed.owners[0].public_key.did], 1, 2)), installed.owners[0])
    )
    sigs = json.dumps(env["signatures"]).encode()
    mlen = struct.unpack(">I", good[8:12])[0]
    slen = struct.unpack(">I", good[12 + mlen : 16 + mlen])[0]
    forged = good[: 12 + mlen] + struct.pack(">I", len(sigs)) + sigs + good[16 + mlen + slen :]
    refused(installed, forged, BundleSignatureError, "threshold")


def test_endless_data(installed: Device) -> None:
    limits = Limits(max_bundle=64 * 1024)
    big = installed.bundle(counter=2, models=(("m.onnx", os.urandom(100 * 1024)),))
    refused(installed, big, BundleFormatError, "oversize", limits=limits)
    # A length header claiming gigabytes is refused before anything is read or allocated.
    header = MAGIC + struct.pack(">I", 0xFFFFFFFF) + b"{"
    refused(installed, header, BundleFormatError, "oversize")


def test_endless_data_in_drop_dir(installed: Device, tmp_path) -> None:
    drop = tmp_path / "usb"
    drop.mkdir()
    (drop / "huge.kbundle").write_bytes(MAGIC + os.urandom(70 * 1024))
    [(path, err)] = scan_drop_dir(
        installed.state, drop, ledger=installed.ledger, now=installed.now, limits=Limits(max_bundle=64 * 1024)
    )
    assert isinstance(err, BundleFormatError) and err.code == "oversize"
    assert installed.kinds("ota.rejected")[-1]["reason"] == "oversize"


def test_extraneous_dependencies_trailing_content(installed: Device) -> None:
    refused(installed, installed.bundle(counter=2) + b"#!/bin/sh\nrm -rf /\n", BundleFormatError, "trailing-data")


def test_extraneous_dependencies_unknown_role(installed: Device) -> None:
    m = manifest_for(installed, [entry("policy.yaml", POLICY_A), entry("run.sh", b"x", role="script")])
    refused(installed, raw_bundle(installed, m, [POLICY_A, b"x"]), BundleFormatError, "bad-manifest")


def test_fast_forward_counter_needs_threshold(device2of3: Device) -> None:
    dev = device2of3
    apply_bundle(dev.state, dev.bundle(counter=1, signers=dev.owners[:2]), ledger=dev.ledger, now=dev.now)
    refused(dev, dev.bundle(counter=2**53 - 1, signers=dev.owners[:1]), BundleSignatureError, "threshold")
    assert ota_status(dev.state, ledger=dev.ledger, now=dev.now)["counter"] == 1
    # The next genuine bundle still installs.
    apply_bundle(dev.state, dev.bundle(counter=2, signers=dev.owners[1:]), ledger=dev.ledger, now=dev.now)


def test_fast_forward_counter_out_of_range(installed: Device) -> None:
    m = manifest_for(installed, [entry("policy.yaml", POLICY_A)], counter=2**64)
    refused(installed, raw_bundle(installed, m, [POLICY_A]), BundleFormatError, "bad-manifest")


def test_indefinite_freeze_replayed_bundle_after_expiry(device: Device) -> None:
    data = device.bundle(counter=1, expires_in=60)
    apply_bundle(device.state, data, ledger=device.ledger, now=device.now)
    later = device.now + 3600
    refused(device, data, BundleExpiredError, "expired", now=later)
    assert ota_status(device.state, ledger=device.ledger, now=later)["active"]["expired"] is True


def test_mix_and_match(installed: Device) -> None:
    a = installed.bundle(counter=2, policy=POLICY_A)
    b = installed.bundle(counter=3, policy=POLICY_B)
    assert len(POLICY_A) == len(POLICY_B)
    mixed = a[: len(a) - len(POLICY_A)] + b[len(b) - len(POLICY_B) :]
    refused(installed, mixed, BundleContentError, "hash-mismatch")


def test_mix_and_match_signatures_of_other_manifest(installed: Device) -> None:
    a = installed.bundle(counter=2, policy=POLICY_A)
    b = installed.bundle(counter=3, policy=POLICY_B, signers=[])
    ma = struct.unpack(">I", a[8:12])[0]
    mb = struct.unpack(">I", b[8:12])[0]
    sig_a = a[12 + ma : 16 + ma + struct.unpack(">I", a[12 + ma : 16 + ma])[0]]
    mixed = b[: 12 + mb] + sig_a + b[12 + mb + 4 + 2 :]
    refused(installed, mixed, BundleSignatureError, "threshold")


def test_rollback_attack(installed: Device) -> None:
    apply_bundle(installed.state, installed.bundle(counter=5), ledger=installed.ledger, now=installed.now)
    refused(installed, installed.bundle(counter=4, policy=POLICY_A), BundleRollbackError, "rollback")
    refused(installed, installed.bundle(counter=5, policy=POLICY_A), BundleRollbackError, "rollback")


def test_rollback_counter_file_deleted_is_caught_by_ledger(installed: Device) -> None:
    apply_bundle(installed.state, installed.bundle(counter=7), ledger=installed.ledger, now=installed.now)
    (installed.state / "ota" / "counter.json").unlink()
    (installed.state / "ota" / "active.json").unlink()
    refused(installed, installed.bundle(counter=6, policy=POLICY_A), BundleRollbackError, "rollback")


def test_key_compromise_below_threshold(device2of3: Device) -> None:
    refused(device2of3, device2of3.bundle(counter=1, signers=device2of3.owners[:1]), BundleSignatureError, "threshold")


def test_duplicate_signatures_counted_once(device2of3: Device) -> None:
    dev = device2of3
    one = dev.bundle(counter=1, signers=dev.owners[:1])
    mlen = struct.unpack(">I", one[8:12])[0]
    slen = struct.unpack(">I", one[12 + mlen : 16 + mlen])[0]
    sigs = json.loads(one[16 + mlen : 16 + mlen + slen])
    doubled = json.dumps(sigs * 2).encode()
    data = one[: 12 + mlen] + struct.pack(">I", len(doubled)) + doubled + one[16 + mlen + slen :]
    refused(dev, data, BundleSignatureError, "threshold")


def test_wrong_software_installation_other_agent(installed: Device) -> None:
    from kestrel.identity.keys import SoftwareSigner

    other = SoftwareSigner.generate().public_key.did
    refused(installed, installed.bundle(counter=2, agents=[other]), BundleTargetError, "wrong-target")
    refused(installed, installed.bundle(counter=2, agents=[], groups=("kitchen",)), BundleTargetError, "wrong-target")


def test_wrong_software_installation_not_a_bundle(installed: Device) -> None:
    env = root_envelope(root_payload([installed.owners[0].public_key.did], 1, 2))
    refused(installed, env, BundleFormatError, "bad-magic")


def test_group_target_accepted(installed: Device) -> None:
    from kestrel.ota.store import OtaDir

    OtaDir(installed.state).write_groups(["greenhouse"])
    res = apply_bundle(
        installed.state,
        installed.bundle(counter=2, agents=[], groups=("greenhouse",)),
        ledger=installed.ledger,
        now=installed.now,
    )
    assert res.counter == 2


# -- malformed bundles -------------------------------------------------------
def test_partial_bundles(installed: Device) -> None:
    data = installed.bundle(counter=2, models=(("m.onnx", b"\x01" * 1000),))
    for cut in (4, 10, 40, len(data) // 2, len(data) - 1):
        refused(installed, data[:cut], BundleFormatError, "truncated" if cut > 8 else "bad-magic")


def test_expired(installed: Device) -> None:
    refused(installed, installed.bundle(counter=2, expires_in=-1), BundleExpiredError, "expired")


def test_path_traversal(installed: Device) -> None:
    for name in ("../escape", "a/b", "/etc/passwd", "..", ".manifest.json", "x\x00y"):
        m = manifest_for(installed, [entry("policy.yaml", POLICY_A), entry(name, b"x", role="model")])
        refused(installed, raw_bundle(installed, m, [POLICY_A, b"x"]), BundleFormatError, "bad-entry-name")
    assert not (installed.state / "escape").exists()
    assert not (installed.state / "ota" / "escape").exists()


def test_symlinks_and_device_nodes_in_manifest(installed: Device) -> None:
    for extra in (
        {"type": "symlink", "link": "/etc/shadow"},
        {"type": "chardev", "major": 1, "minor": 3},
        {"mode": 0o4755},
    ):
        m = manifest_for(installed, [entry("policy.yaml", POLICY_A), entry("m", b"", role="model", **extra)])
        refused(installed, raw_bundle(installed, m, [POLICY_A, b""]), BundleFormatError, "unsupported-entry")


def test_symlinks_and_device_nodes_refused_by_builder(tmp_path, installed: Device) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_bytes(POLICY_A)
    link = tmp_path / "model.onnx"
    link.symlink_to("/etc/hostname")
    for bad in (link, "/dev/null"):
        from pathlib import Path

        with pytest.raises(BundleFormatError) as info:
            build_bundle_files(
                policy=pol,
                models=[Path(bad)],
                counter=2,
                now=installed.now,
                expires=installed.now + 60,
                agents=[installed.agent],
                groups=[],
            )
        assert info.value.code == "not-regular-file"


def test_symlink_in_drop_dir(installed: Device, tmp_path) -> None:
    drop = tmp_path / "usb"
    drop.mkdir()
    real = tmp_path / "real.kbundle"
    real.write_bytes(installed.bundle(counter=2))
    (drop / "x.kbundle").symlink_to(real)
    os.mkfifo(drop / "y.kbundle")  # a special file: must not block the scan or be read
    (drop / "z.kbundle").mkdir()
    results = scan_drop_dir(installed.state, drop, ledger=installed.ledger, now=installed.now)
    assert [(p.name, e.code) for p, e in results] == [
        ("x.kbundle", "not-regular-file"),
        ("y.kbundle", "not-regular-file"),
        ("z.kbundle", "not-regular-file"),
    ]
    assert active_policy(installed.state)[0].digest == hashlib.sha256(POLICY_V1).hexdigest()


def test_duplicate_entries(installed: Device) -> None:
    for dup in ("model.onnx", "MODEL.onnx"):
        m = manifest_for(
            installed,
            [entry("policy.yaml", POLICY_A), entry("model.onnx", b"a", role="model"), entry(dup, b"b", role="model")],
        )
        refused(installed, raw_bundle(installed, m, [POLICY_A, b"a", b"b"]), BundleFormatError, "duplicate-entry")
    m = manifest_for(installed, [entry("policy.yaml", POLICY_A), entry("p2.yaml", POLICY_B)])
    refused(installed, raw_bundle(installed, m, [POLICY_A, POLICY_B]), BundleFormatError, "bad-manifest")
    # Duplicate JSON keys in the manifest itself.
    m = manifest_for(installed, [entry("policy.yaml", POLICY_A)])
    text = json.dumps(m)[:-1] + ', "counter": 99}'
    data = sign_bundle(encode_bundle(text.encode(), b"[]", [POLICY_A]), installed.owners[0])
    refused(installed, data, BundleFormatError, "bad-manifest")


def test_decompression_bomb(installed: Device) -> None:
    # No compression exists in the format: a declared size is the stored size, checked
    # against limits before anything is read, hashed or allocated.
    m = manifest_for(
        installed,
        [entry("policy.yaml", POLICY_A), {"name": "m.onnx", "role": "model", "size": 1 << 40, "sha256": "0" * 64}],
    )
    refused(installed, raw_bundle(installed, m, [POLICY_A]), BundleFormatError, "oversize")
    bomb = gzip.compress(b"\0" * (8 << 20))
    refused(installed, bomb, BundleFormatError, "bad-magic")


def test_oversize_files(installed: Device) -> None:
    limits = Limits(max_entry=1024, max_policy=512)
    refused(
        installed,
        installed.bundle(counter=2, models=(("m.onnx", b"x" * 2048),)),
        BundleFormatError,
        "oversize",
        limits=limits,
    )
    refused(
        installed,
        installed.bundle(counter=2, policy=b"actions: [a]\n" + b"#" * 600 + b"\n"),
        BundleFormatError,
        "oversize",
        limits=limits,
    )


def test_bad_policy_in_signed_bundle_rolls_back(installed: Device) -> None:
    from kestrel.ota.errors import BundleHealthError

    m = manifest_for(installed, [entry("policy.yaml", b"actions: {")])
    with pytest.raises(BundleHealthError) as info:
        apply_bundle(
            installed.state, raw_bundle(installed, m, [b"actions: {"]), ledger=installed.ledger, now=installed.now
        )
    assert info.value.code == "bad-policy"
    assert active_policy(installed.state)[0].digest == hashlib.sha256(POLICY_V1).hexdigest()
    assert installed.kinds("ota.rejected")[-1]["reason"] == "bad-policy"

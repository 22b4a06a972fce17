"""Trust root: provisioning, k-of-n, TUF-style rotation needing old and new thresholds."""

from __future__ import annotations

import json

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ota import apply_bundle
from kestrel.ota.errors import BundleSignatureError, TrustRootError
from kestrel.ota.root import parse_root, root_envelope, root_payload, sign_root, verify_rotation
from kestrel.ota.store import OtaDir

from .conftest import Device


def _next(owners, threshold, version, signers) -> bytes:
    env = root_envelope(root_payload([o.public_key.did for o in owners], threshold, version))
    for s in signers:
        env = sign_root(env, s)
    return env


def test_provisioning_file_becomes_root_v1(state_dir, owners) -> None:
    (state_dir / "identity").mkdir(mode=0o700)
    prov = {"format": "kestrel-provisioning/1", "owners": [o.public_key.did for o in owners[:2]], "threshold": 2}
    (state_dir / "identity" / "provisioning.json").write_text(json.dumps(prov))
    root = OtaDir(state_dir).trust_root()
    assert (root.version, root.threshold, root.owners) == (1, 2, tuple(prov["owners"]))
    assert (state_dir / "ota" / "root.json").exists()


def test_no_root_is_a_clear_error(state_dir) -> None:
    with pytest.raises(TrustRootError) as info:
        OtaDir(state_dir).trust_root()
    assert info.value.code == "no-root" and "kestrel trust init" in str(info.value)


@pytest.mark.parametrize("owners_n,threshold", [(0, 1), (2, 3), (2, 0)])
def test_bad_root_payloads(owners_n, threshold) -> None:
    keys = [SoftwareSigner.generate().public_key.did for _ in range(owners_n)]
    with pytest.raises(TrustRootError):
        root_payload(keys, threshold, 1)
    with pytest.raises(TrustRootError):
        root_payload(["did:key:zNOTAKEY"], 1, 1)


def test_rotation_needs_old_and_new_thresholds(device2of3: Device) -> None:
    dev, o = device2of3, device2of3.owners
    new_keys = [SoftwareSigner.generate() for _ in range(2)]
    ota = OtaDir(dev.state)
    current = ota.trust_root()
    cases = [
        ([o[0]] + new_keys, "root-threshold"),  # one old key only (below the old threshold)
        (o[:2] + new_keys[:1], "root-threshold"),  # old threshold, but only 1 of 2 new keys
        (o[:2] + new_keys, None),
    ]
    for signers, code in cases:
        env = _next(new_keys, 2, 2, signers)
        if code:
            with pytest.raises(TrustRootError) as info:
                ota.rotate_root(env)
            assert info.value.code == code
            assert ota.trust_root().version == 1
        else:
            old, new = ota.rotate_root(env)
            assert (old.version, new.version) == (1, 2)
    with pytest.raises(TrustRootError) as info:
        verify_rotation(current, _next(new_keys, 1, 3, o[:2] + new_keys))
    assert info.value.code == "root-version"
    # Bundles now need the new owners; the old ones are no longer trusted.
    with pytest.raises(BundleSignatureError):
        apply_bundle(dev.state, dev.bundle(counter=1, signers=o[:3]), ledger=dev.ledger, now=dev.now)
    apply_bundle(dev.state, dev.bundle(counter=1, signers=new_keys), ledger=dev.ledger, now=dev.now)


def test_tampered_root_file_refused(device2of3: Device) -> None:
    path = device2of3.state / "ota" / "root.json"
    env = json.loads(path.read_text())
    env["payloadType"] = "text/plain"
    path.write_text(json.dumps(env))
    with pytest.raises(TrustRootError):
        OtaDir(device2of3.state).trust_root()


def test_unsigned_root_above_v1_refused(owners) -> None:
    with pytest.raises(TrustRootError) as info:
        parse_root(_next(owners, 1, 2, []))
    assert info.value.code == "root-threshold"

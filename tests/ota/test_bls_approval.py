"""Owner approvals as one BLS aggregate (`kestrel bundle sign --bls`): k owners, one 96-byte
signature, verified with the trust root's BLS keys; Ed25519 stays the default."""

from __future__ import annotations

import base64
import json
import time

import pytest

from kestrel.identity.keys import SoftwareSigner
from kestrel.ota.build import make_bundle
from kestrel.ota.bundle import BundleSignatureError, Limits, sign_bundle, sign_bundle_bls, split_bundle, verify_bundle
from kestrel.ota.errors import BundleFormatError, TrustRootError
from kestrel.ota.root import parse_root, root_envelope, root_payload

pytest.importorskip("blspy")
from kestrel.ota.bls_approval import owner_bls_entry  # noqa: E402

AGENT = SoftwareSigner.generate().public_key.did


@pytest.fixture(scope="module")
def owners() -> list[SoftwareSigner]:
    return [SoftwareSigner.generate() for _ in range(4)]


def _root(owners, threshold, bls_of):
    bls = {o.public_key.did: owner_bls_entry(o) for o in bls_of}
    return parse_root(root_envelope(root_payload([o.public_key.did for o in owners], threshold, 1, bls=bls)))


def _bundle(counter: int = 1) -> bytes:
    now = time.time()
    return make_bundle(policy=b"actions: [gpio.write]\n", counter=counter, now=now, expires=now + 3600, agents=[AGENT])


def _verify(data, root):
    return verify_bundle(data, root=root, now=time.time(), agent_id=AGENT)


def _entries(data) -> list[dict]:
    _, sigblock, _ = split_bundle(data, Limits())
    return json.loads(sigblock)


def test_two_owners_approve_with_one_aggregate(owners):
    root = _root(owners[:3], 2, owners[:3])
    data = sign_bundle_bls(sign_bundle_bls(_bundle(), owners[0]), owners[1])
    entries = _entries(data)
    assert len(entries) == 1 and entries[0]["bls"] == [owners[0].public_key.did, owners[1].public_key.did]
    assert len(base64.b64decode(entries[0]["sig"])) == 96  # one signature for both
    assert sign_bundle_bls(data, owners[1]) == data  # signing twice adds nothing
    verified = _verify(data, root)
    assert verified.manifest.counter == 1
    assert set(verified.signed_by) == {owners[0].public_key.did, owners[1].public_key.did}


def test_one_approval_is_below_the_threshold(owners):
    root = _root(owners[:3], 2, owners[:3])
    with pytest.raises(BundleSignatureError):
        _verify(sign_bundle_bls(_bundle(), owners[0]), root)


def test_ed25519_and_bls_approvals_count_together_and_survive_each_other(owners):
    root = _root(owners[:3], 2, owners[:3])
    data = sign_bundle(sign_bundle_bls(_bundle(), owners[0]), owners[1])  # the Ed25519 signer keeps the BLS entry
    assert {("bls" in e) for e in _entries(data)} == {True, False}
    _verify(data, root)
    # the same owner twice (BLS and Ed25519) counts once
    with pytest.raises(BundleSignatureError):
        _verify(sign_bundle(sign_bundle_bls(_bundle(), owners[0]), owners[0]), root)


def test_entries_that_prove_nothing_add_nothing(owners):
    no_bls_root = _root(owners[:3], 2, [])
    both = sign_bundle_bls(sign_bundle_bls(_bundle(), owners[0]), owners[1])
    with pytest.raises(BundleSignatureError):  # the root lists no BLS keys: Ed25519 only
        _verify(both, no_bls_root)
    partial_root = _root(owners[:3], 2, owners[:1])  # owner 1 has no BLS key in the root
    with pytest.raises(BundleSignatureError):
        _verify(both, partial_root)
    outsider = sign_bundle_bls(sign_bundle_bls(_bundle(), owners[0]), owners[3])  # not an owner
    with pytest.raises(BundleSignatureError):
        _verify(outsider, _root(owners[:3], 2, owners[:3]))
    # a different manifest under the same aggregate
    other = _bundle(counter=2)
    manifest, _, rest = split_bundle(other, Limits())
    from kestrel.ota.bundle import encode_bundle

    _, sigblock, _ = split_bundle(both, Limits())
    with pytest.raises(BundleSignatureError):
        _verify(encode_bundle(manifest, sigblock, [rest]), _root(owners[:3], 2, owners[:3]))


def test_a_root_key_without_its_proof_of_possession_is_never_aggregated(owners):
    from kestrel.ota.bls_approval import owner_bls_key

    dids = [o.public_key.did for o in owners[:3]]
    bls = {o.public_key.did: owner_bls_entry(o) for o in owners[:3]}
    bls[dids[1]] = {"pk": bls[dids[1]]["pk"], "pop": owner_bls_key(owners[0]).prove_possession().hex()}
    root = parse_root(root_envelope(root_payload(dids, 2, 1, bls=bls)))
    with pytest.raises(BundleSignatureError):
        _verify(sign_bundle_bls(sign_bundle_bls(_bundle(), owners[0]), owners[1]), root)


@pytest.mark.parametrize(
    "bls",
    [
        {"did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK": None},  # not an owner
        "not a map",
    ],
)
def test_malformed_bls_maps_are_refused(owners, bls):
    dids = [o.public_key.did for o in owners[:2]]
    payload = json.dumps({"_type": "kestrel.root", "version": 1, "threshold": 1, "owners": dids, "bls": bls})
    with pytest.raises(TrustRootError):
        parse_root(root_envelope(payload.encode()))
    for entry in ({"pk": "zz", "pop": "00"}, {"pk": "00" * 48}, {"pk": "00" * 47, "pop": "00" * 96}):
        with pytest.raises(TrustRootError):
            root_payload(dids, 1, 1, bls={dids[0]: entry})


def test_signature_list_bls_entries_are_checked_for_shape(owners):
    from kestrel.ota.bundle import encode_bundle

    manifest, _, rest = split_bundle(_bundle(), Limits())
    root = _root(owners[:3], 1, owners[:3])
    for bad in (
        [{"bls": [], "sig": "AA=="}],
        [{"bls": ["x", "x"], "sig": base64.b64encode(bytes(96)).decode()}],
        [{"bls": ["x"], "sig": base64.b64encode(bytes(64)).decode()}],
        [{"bls": ["x"], "sig": "!!"}],
    ):
        with pytest.raises(BundleFormatError, match="BLS"):
            _verify(encode_bundle(manifest, json.dumps(bad).encode(), [rest]), root)


def test_cli_owner_bls_trust_init_and_bundle_sign_bls(tmp_path, monkeypatch, capsys):
    from kestrel.cli import main

    monkeypatch.setenv("KESTREL_STATE", str(tmp_path / "state"))
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(tmp_path / "machine-id"))
    monkeypatch.setenv("KESTREL_OWNER_PASSPHRASE", "owner passphrase 1")
    monkeypatch.chdir(tmp_path)
    assert main(["init-agent", "--name", "Test", "--machine-bound"]) == 0
    capsys.readouterr()
    assert main(["identity", "show", "--did"]) == 0
    agent = capsys.readouterr().out.strip()
    dids = []
    for name in ("o1", "o2", "o3"):
        assert main(["owner", "init", "--key", f"{name}.key"]) == 0
        dids.append(capsys.readouterr().out.strip())
        assert main(["owner", "show", "--bls", "--key", f"{name}.key"]) == 0
        entry = capsys.readouterr().out
        assert json.loads(entry)["did"] == dids[-1]
        (tmp_path / f"{name}.bls").write_text(entry)
    (tmp_path / "policy.yaml").write_text("actions: [gpio.write]\n")
    assert (
        main(
            [
                "trust",
                "init",
                *sum((["--owner", d] for d in dids), []),
                "--threshold",
                "2",
                "--bls-key",
                "o1.bls",
                "--bls-key",
                "o2.bls",
                "--bls-key",
                "o3.bls",
            ]
        )
        == 0
    )
    assert (
        main(["bundle", "build", "--policy", "policy.yaml", "--counter", "1", "--target", agent, "-o", "b.kbundle"])
        == 0
    )
    assert main(["bundle", "sign", "--bls", "b.kbundle", "--key", "o1.key"]) == 0
    assert main(["ota", "apply", "b.kbundle"]) != 0  # one approval of two
    assert main(["bundle", "sign", "--bls", "b.kbundle", "--key", "o3.key"]) == 0
    assert "(BLS aggregate)" in capsys.readouterr().out
    assert len(_entries((tmp_path / "b.kbundle").read_bytes())) == 1
    assert main(["ota", "apply", "b.kbundle"]) == 0
    (tmp_path / "junk.bls").write_text("{}")
    assert (
        main(["trust", "rotate", "--owner", dids[0], "--bls-key", "junk.bls", "--key", "o1.key", "--out", "r.json"])
        == 64
    )
    assert "not a BLS key entry" in capsys.readouterr().err

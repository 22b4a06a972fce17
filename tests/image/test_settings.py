"""The pure core of first boot: owner.json and the boot inputs (bytes in, values or errors out)."""

from __future__ import annotations

import json

import pytest
from firstboot_settings import OwnerSettings, parse_boot_inputs, parse_owner_file, sha256_hex

from kestrel.errors import ConfigError, DataError

DID = "did:key:z6MkiFtUoJ9smUxSmnPeNZvf6Z8ibAEMhE1wnF6xhRYAsU7r"
DID2 = "did:key:z6Mkqk6kaCdxFyLDHFuzKb1fZsV9MuxCBiVM6aKNTPAAtpCx"


def _owner(**kw: object) -> bytes:
    return json.dumps({"format": "kestrel-owner/1", "owners": [DID], **kw}).encode()


def test_minimal_owner_file_gets_defaults() -> None:
    assert parse_owner_file(_owner()) == OwnerSettings(owners=(DID,), threshold=1)


def test_full_owner_file_with_bom() -> None:
    data = "\ufeff".encode() + _owner(
        owners=[DID, DID2], threshold=2, name="gh-1", groups=["b", "a", "a"], keystore="tpm"
    )
    got = parse_owner_file(data)
    assert got == OwnerSettings(owners=(DID, DID2), threshold=2, name="gh-1", groups=("a", "b"), keystore="tpm")


@pytest.mark.parametrize(
    "data, key",
    [
        (_owner(threshold=0), "threshold"),
        (_owner(threshold=True), "threshold"),
        (_owner(threshold=1.0), "threshold"),
        (_owner(name="has space"), "name"),
        (_owner(groups=["UPPER"]), "groups"),
        (_owner(keystore="hsm"), "keystore"),
        (_owner(owners=[]), "owners"),
        (_owner(owners=[DID, DID]), "owners"),
        (b'{"format": "kestrel-owner/1", "owners": ["%s"], "threshold": NaN}' % DID.encode(), None),
        (b"[1, 2]", None),
    ],
)
def test_bad_owner_files_name_the_key(data: bytes, key: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_owner_file(data, source="/boot/firmware/kestrel/owner.json")
    assert "/boot/firmware/kestrel/owner.json" in str(info.value)
    if key:
        assert f"key '{key}'" in str(info.value)
    assert info.value.exit_code == 2


def test_boot_inputs_validate_config_and_hash_every_file() -> None:
    files = {"owner.json": _owner(), "device.yaml": b"version: 1\nname: x\n", "a.kbundle": b"A"}
    inputs = parse_boot_inputs(files, where="/boot")
    assert inputs.bundles == (("a.kbundle", b"A"),)
    assert dict(inputs.digests) == {name: sha256_hex(data) for name, data in files.items()}
    with pytest.raises(ConfigError, match="device.yaml:2"):
        parse_boot_inputs({"device.yaml": b"version: 1\nbogus: 1\nname: x\n"}, where="/boot")
    with pytest.raises(DataError, match="holds 2 bundles"):
        parse_boot_inputs({"owner.json": _owner(), "a.kbundle": b"A", "b.kbundle": b"B"}, where="/boot")
    with pytest.raises(DataError, match="no owner.json"):
        parse_boot_inputs({"a.kbundle": b"A"}, where="/boot")
    with pytest.raises(DataError, match="over the"):
        parse_boot_inputs({"owner.json": b" " * (16 << 20 + 1)}, where="/boot")

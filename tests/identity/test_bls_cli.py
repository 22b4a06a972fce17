"""`kestrel identity bls`: create, show and rotate the agent's BLS key, as real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("blspy")


def _ok(proc) -> dict:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def test_create_show_rotate_and_clear_refusals(cli, tmp_path: Path) -> None:
    from kestrel.identity.bls import verify_certificate
    from kestrel.ledger.reader import iter_records

    state, pw = tmp_path / "s", tmp_path / "pw"
    pw.write_text("correct horse\n")
    assert cli("init-agent", "--name", "g1", "--state", str(state), "--passphrase-file", str(pw)).returncode == 0
    base = ("identity", "bls", "--state", str(state), "--passphrase-file", str(pw))
    none = cli(*base)
    assert none.returncode == 64 and "has no BLS key" in none.stderr and "--create" in none.stderr
    assert cli(*base, "--rotate").returncode == 64
    first = _ok(cli(*base, "--create", "--json"))
    again = cli(*base, "--create")
    assert again.returncode == 64 and "already has a BLS key" in again.stderr and "Traceback" not in again.stderr
    assert _ok(cli(*base, "--json")) == first
    second = _ok(cli(*base, "--rotate", "--json"))
    assert (first["serial"], second["serial"]) == (1, 2) and first["agent"] == second["agent"]
    assert second["public_key"] != first["public_key"]
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    bad = cli("identity", "bls", "--rotate", "--state", str(state), "--passphrase-file", str(wrong))
    assert bad.returncode != 0 and "passphrase" in bad.stderr and "Traceback" not in bad.stderr
    records = [r for r in iter_records(state / "ledger") if r.kind == "bls.key"]
    assert [r.body["serial"] for r in records] == [1, 2]
    assert (
        verify_certificate(records[1].body["cert"], agent=first["agent"]).public_key.raw.hex() == second["public_key"]
    )

"""The owner/trust/bundle/ota/set-policy commands, end to end through ``kestrel.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kestrel.cli import main

OWNER_PASS = "owner passphrase 1"
SEED = (
    "actions:\n  - send_email\n  - schedule_event\n  - fetch_data\nrestrictions:\n"
    "  - no_external_network unless explicitly permitted\n"
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("KESTREL_STATE", str(tmp_path / "state"))
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(tmp_path / "machine-id"))  # fast unattended unlock
    monkeypatch.setenv("KESTREL_OWNER_KEY", str(tmp_path / "owner" / "owner.key"))
    monkeypatch.setenv("KESTREL_OWNER_PASSPHRASE", OWNER_PASS)
    monkeypatch.chdir(tmp_path)
    assert main(["init-agent", "--name", "Test", "--machine-bound"]) == 0
    (tmp_path / "policy.yaml").write_text(SEED)
    return tmp_path


def _did(capsys) -> str:
    capsys.readouterr()
    assert main(["identity", "show", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["did"]


def test_quick_start_set_policy(env: Path, capsys) -> None:
    assert main(["set-policy", "policy.yaml"]) == 0
    assert "counter 1" in capsys.readouterr().out
    assert (env / "owner" / "owner.key").stat().st_mode & 0o777 == 0o600
    sealed = (env / "owner" / "owner.key").read_bytes()
    assert sealed.startswith(b"KSTRLOWN")
    from kestrel.ota.owner import load_owner_signer

    seed = load_owner_signer(env / "owner" / "owner.key", OWNER_PASS.encode()).private_key.private_bytes_raw()
    assert seed not in sealed
    assert main(["policy", "explain", "--action", "send_email", "--to", "a@b.example"]) == 0
    assert "ALLOW send_email: rule actions[0]" in capsys.readouterr().out
    assert main(["policy", "explain", "--action", "fetch_data", "--url", "https://x.example/"]) == 1
    assert "restrictions[0]" in capsys.readouterr().out
    (env / "p2.yaml").write_text("actions: [send_email]\n")
    assert main(["set-policy", "p2.yaml"]) == 0
    assert main(["policy", "explain", "--action", "schedule_event"]) == 1
    assert main(["ota", "rollback"]) == 0
    assert main(["policy", "explain", "--action", "schedule_event"]) == 0
    capsys.readouterr()
    assert main(["ota", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["counter"] == 2 and st["active"]["slot"] == "a" and st["previous"]["slot"] == "b"


def test_bad_policy_is_refused_before_anything(env: Path, capsys) -> None:
    (env / "bad.yaml").write_text("actions: [send email]\n")
    assert main(["set-policy", "bad.yaml"]) == 2
    assert "bad.yaml:1:" in capsys.readouterr().err
    assert not (env / "state" / "ota" / "active.json").exists()


def test_owner_bundle_trust_workflow(env: Path, capsys) -> None:
    did = _did(capsys)
    keys = []
    for name in ("o1", "o2", "o3"):
        assert main(["owner", "init", "--key", f"{name}.key"]) == 0
        keys.append(capsys.readouterr().out.strip())
    assert all(k.startswith("did:key:z6Mk") for k in keys)
    assert main(["owner", "init", "--key", "o1.key"]) == 64  # never overwritten
    assert main(["trust", "init", "--owner", keys[0], "--owner", keys[1], "--threshold", "2"]) == 0
    assert (
        main(["bundle", "build", "--policy", "policy.yaml", "--counter", "1", "--target", did, "-o", "b.kbundle"]) == 0
    )
    assert main(["bundle", "sign", "b.kbundle", "--key", "o1.key"]) == 0
    capsys.readouterr()
    assert main(["ota", "apply", "b.kbundle"]) == 2  # 1 of 2 signatures
    err = capsys.readouterr().err
    assert "signed by 1 distinct trusted owner key" in err and "Traceback" not in err
    assert main(["bundle", "sign", "b.kbundle", "--key", "o2.key"]) == 0
    assert main(["bundle", "verify", "b.kbundle"]) == 0
    assert "OK bundle" in capsys.readouterr().out
    assert main(["bundle", "verify", "b.kbundle", "--trust", "state/ota/root.json", "--agent", did]) == 0
    assert main(["ota", "apply", "b.kbundle"]) == 0
    assert main(["ota", "apply", "b.kbundle"]) == 0
    assert "already active" in capsys.readouterr().out
    # Rotate to {o2, o3} 2-of-2: needs 2 of the old keys and 2 of the new ones.
    rotate = ["trust", "rotate", "--owner", keys[1], "--owner", keys[2], "--threshold", "2"]
    assert main(rotate + ["--key", "o2.key", "--key", "o3.key"]) == 2
    assert main(["trust", "show"]) == 0
    capsys.readouterr()
    assert main(rotate + ["--key", "o1.key", "--key", "o2.key", "--key", "o3.key", "--out", "root2.json"]) == 0
    assert main(["trust", "apply", "root2.json"]) == 0
    capsys.readouterr()
    assert main(["trust", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2


def test_wrong_owner_passphrase(env: Path, capsys, monkeypatch) -> None:
    assert main(["owner", "init", "--key", "o.key"]) == 0
    monkeypatch.setenv("KESTREL_OWNER_PASSPHRASE", "wrong passphrase")
    assert (
        main(
            [
                "bundle",
                "build",
                "--policy",
                "policy.yaml",
                "--counter",
                "1",
                "--target",
                "did:key:zX",
                "-o",
                "b.kbundle",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["bundle", "sign", "b.kbundle", "--key", "o.key"]) == 2
    assert "cannot unlock the owner key" in capsys.readouterr().err


BAD_INPUTS = [
    (["ota", "apply", "missing.kbundle"], 3),
    (["bundle", "verify", "policy.yaml"], 2),
    (["bundle", "build", "--policy", "policy.yaml", "--counter", "0", "--target", "x", "-o", "o"], 2),
    (["bundle", "build", "--policy", "policy.yaml", "--counter", "1", "-o", "o"], 2),
    (
        [
            "bundle",
            "build",
            "--policy",
            "policy.yaml",
            "--counter",
            "1",
            "--target",
            "x",
            "--expires",
            "soon",
            "-o",
            "o",
        ],
        64,
    ),
    (["bundle", "build", "--policy", "/dev/null", "--counter", "1", "--target", "x", "-o", "o"], 2),
    (["ota", "rollback"], 2),
    (["trust", "show"], 2),
    (["trust", "apply", "policy.yaml"], 2),
    (["owner", "show", "--key", "nothing.key"], 3),
]


def test_bad_inputs_exit_cleanly(env: Path, capsys) -> None:
    for argv, code in BAD_INPUTS:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("kestrel: error:") and "Traceback" not in err, argv

"""The `kestrel init-agent` / `kestrel identity` commands, run as real subprocesses."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kestrel.identity import PublicKey
from tests.fixtures.procs import free_port


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def _fails(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stderr.startswith("kestrel: error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def _show(cli, state: Path) -> dict:
    proc = cli("identity", "show", "--json", "--state", str(state))
    _ok(proc)
    return json.loads(proc.stdout)


def test_unattended_init_is_machine_bound_and_says_so(cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = cli("init-agent", "--name", "porch-bot", "--state", str(state))
    _ok(proc)
    assert "machine-bound" in proc.stderr and "--passphrase-file" in proc.stderr
    doc = _show(cli, state)
    assert doc["name"] == "porch-bot" and doc["protection"] == "machine-bound"
    assert doc["backend"] == "file" and doc["algorithm"] == "ed25519"
    assert doc["did"] in proc.stdout
    PublicKey.from_did(doc["did"])
    text = cli("identity", "show", "--state", str(state))
    _ok(text)
    assert doc["did"] in text.stdout and "ed25519" in text.stdout and doc["created_at"] in text.stdout
    from kestrel import Agent

    with Agent.open(state) as agent:  # machine-bound: opens unattended on this machine
        created = [r.body for r in agent.ledger if r.kind == "agent.created"]
        assert created == [{"name": "porch-bot", "did": doc["did"], "algorithm": "ed25519", "backend": "file"}]
        agent.ledger.verify()


def test_init_refuses_an_existing_identity(cli, tmp_path: Path) -> None:
    state = tmp_path / "state"
    _ok(cli("init-agent", "--name", "a", "--state", str(state), "--machine-bound"))
    before = {p: p.read_bytes() for p in (state / "identity").iterdir()}
    _fails(cli("init-agent", "--name", "b", "--state", str(state), "--algorithm", "p256"), 2, "not replaceable")
    assert {p: p.read_bytes() for p in (state / "identity").iterdir()} == before


def test_init_refuses_a_ledger_left_by_another_agent(cli, tmp_path: Path) -> None:
    import shutil

    state = tmp_path / "state"
    _ok(cli("init-agent", "--name", "a", "--state", str(state), "--machine-bound"))
    shutil.rmtree(state / "identity")
    ledger_before = {p: p.read_bytes() for p in (state / "ledger").rglob("*") if p.is_file()}
    _fails(
        cli("init-agent", "--name", "b", "--state", str(state), "--machine-bound"),
        2,
        "ledger of an earlier agent",
        "identity restore",
    )
    assert not (state / "identity").exists()
    assert {p: p.read_bytes() for p in (state / "ledger").rglob("*") if p.is_file()} == ledger_before


def test_passphrase_file_backup_and_restore(cli, tmp_path: Path) -> None:
    state, restored = tmp_path / "s", tmp_path / "r"
    pw = tmp_path / "pw"
    pw.write_text("open sesame\n")
    bpw = tmp_path / "bpw"
    bpw.write_text("backup secret\n")
    _ok(cli("init-agent", "--name", "pbot", "--algorithm", "p256", "--state", str(state), "--passphrase-file", str(pw)))
    did = _show(cli, state)["did"]
    assert _show(cli, state)["protection"] == "passphrase"
    backup = tmp_path / "agent.kbak"
    _fails(
        cli("identity", "backup", str(backup), "--state", str(state), "--backup-passphrase-file", str(bpw)),
        64,
        "passphrase is needed",
    )
    _ok(
        cli(
            "identity",
            "backup",
            str(backup),
            "--state",
            str(state),
            "--passphrase-file",
            str(pw),
            "--backup-passphrase-file",
            str(bpw),
        )
    )
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    _fails(
        cli(
            "identity",
            "backup",
            str(backup),
            "--state",
            str(state),
            "--passphrase-file",
            str(pw),
            "--backup-passphrase-file",
            str(bpw),
        ),
        64,
        "already exists",
    )
    _fails(
        cli("identity", "restore", str(backup), "--state", str(restored)),
        64,
        "passphrase is needed for the backup",
        "KESTREL_BACKUP_PASSPHRASE",
    )
    _fails(cli("identity", "restore", str(backup), "--state", str(restored)), 64)
    _fails(
        cli("identity", "restore", str(backup), "--state", str(restored), env={"KESTREL_BACKUP_PASSPHRASE": "wrong"}),
        2,
        "wrong passphrase for the backup",
    )
    assert not (restored / "identity").exists()
    _ok(
        cli(
            "identity",
            "restore",
            str(backup),
            "--state",
            str(restored),
            env={"KESTREL_BACKUP_PASSPHRASE": "backup secret", "KESTREL_PASSPHRASE": "new pass"},
        )
    )
    assert _show(cli, restored)["did"] == did
    _fails(
        cli(
            "identity",
            "restore",
            str(backup),
            "--state",
            str(state),
            env={"KESTREL_BACKUP_PASSPHRASE": "backup secret"},
        ),
        2,
        "not replaceable",
    )


def test_bad_inputs_give_clear_errors(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    _fails(cli("identity", "show", "--state", str(state)), 2, "no agent identity", "kestrel init-agent")
    empty = tmp_path / "empty"
    empty.write_text("")
    _fails(cli("init-agent", "--name", "x", "--state", str(state), "--passphrase-file", str(empty)), 64, "empty")
    _fails(
        cli("init-agent", "--name", "x", "--state", str(state), "--passphrase-file", str(tmp_path / "missing")),
        3,
        "not found",
    )
    _fails(
        cli("init-agent", "--name", "x", "--state", str(state), "--owner", "did:key:zNOPE"), 2, "--owner did:key:zNOPE"
    )
    _fails(cli("init-agent", "--name", "x", "--state", str(state), "--tpm", "--algorithm", "ed25519"), 64, "P-256")
    _fails(cli("init-agent", "--name", "x", "--state", str(state), "--tcti", "device:/dev/tpmrm0"), 64, "--tpm")
    assert not (state / "identity").exists()
    garbage = tmp_path / "garbage.kbak"
    garbage.write_bytes(b"\x00" * 300)
    _fails(
        cli("identity", "restore", str(garbage), "--state", str(state), env={"KESTREL_BACKUP_PASSPHRASE": "x"}),
        2,
        "damaged",
    )


def test_corrupt_keystore_via_cli(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    _ok(cli("init-agent", "--name", "x", "--state", str(state), env={"KESTREL_PASSPHRASE": "pw"}))
    key = state / "identity" / "key.enc"
    data = bytearray(key.read_bytes())
    data[60] ^= 1
    key.write_bytes(bytes(data))
    _fails(
        cli(
            "identity",
            "backup",
            str(tmp_path / "b"),
            "--state",
            str(state),
            env={"KESTREL_PASSPHRASE": "pw", "KESTREL_BACKUP_PASSPHRASE": "b"},
        ),
        2,
        "damaged",
    )
    assert key.read_bytes() == bytes(data)


def test_owners_are_stored_for_ota(cli, tmp_path: Path) -> None:
    from kestrel.identity import SoftwareSigner

    owners = [SoftwareSigner.generate().public_key.did for _ in range(3)]
    state = tmp_path / "s"
    args = ["init-agent", "--name", "x", "--state", str(state), "--machine-bound"]
    for o in owners:
        args += ["--owner", o]
    _fails(cli(*args, "--threshold", "4"), 64, "--threshold")
    _ok(cli(*args, "--threshold", "2"))
    path = state / "identity" / "provisioning.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"format": "kestrel-provisioning/1", "owners": owners, "threshold": 2}


@pytest.mark.swtpm
def test_tpm_init_show_and_no_export(cli, tmp_path: Path, swtpm) -> None:
    state = tmp_path / "s"
    proc = cli("init-agent", "--name", "tbot", "--tpm", "--tcti", swtpm.tcti, "--state", str(state))
    _ok(proc)
    doc = _show(cli, state)
    assert doc["backend"] == "tpm" and doc["algorithm"] == "p256" and doc["tcti"] == swtpm.tcti
    _fails(cli("identity", "backup", str(tmp_path / "b"), "--state", str(state)), 2, "cannot be exported")


@pytest.mark.swtpm
def test_tpm_unreachable_via_cli(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    _fails(
        cli(
            "init-agent",
            "--name",
            "t",
            "--tpm",
            "--tcti",
            f"swtpm:host=127.0.0.1,port={free_port(2)}",
            "--state",
            str(state),
        ),
        3,
        "cannot reach the TPM",
        "hint:",
    )
    assert not (state / "identity").exists()


def _run_on_terminal(args: list[str], answers: list[str], *, timeout: float = 60) -> tuple[int, str]:
    """Run `kestrel ARGS` with a real controlling terminal; type each answer at each prompt."""
    import os
    import pty
    import select
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is stdin/stdout/stderr and the controlling terminal
        os.execve(sys.executable, [sys.executable, "-c", "from kestrel.cli import run; run()", *args], env)
    out = b""
    pending = list(answers)
    answered_at = -1
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if pending and out.endswith(b": ") and answered_at != len(out):  # a prompt is waiting
                    answered_at = len(out)
                    os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        exited = os.pidfd_open(pid)  # readable once the child has exited
        try:
            if not select.select([exited], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, 9)  # stuck at a prompt the test did not expect
        finally:
            os.close(exited)
        status = os.waitpid(pid, 0)[1]
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_interactive_prompt_on_a_terminal(cli, tmp_path: Path) -> None:
    state = tmp_path / "s"
    rc, out = _run_on_terminal(["init-agent", "--name", "tty", "--state", str(state)], ["typed pw", "other"])
    assert rc == 64 and "differ" in out and "Traceback" not in out
    assert not (state / "identity").exists()
    rc, out = _run_on_terminal(["init-agent", "--name", "tty", "--state", str(state)], ["typed pw", "typed pw"])
    assert rc == 0, out
    assert "typed pw" not in out  # not echoed
    assert _show(cli, state)["protection"] == "passphrase"
    rc, out = _run_on_terminal(["identity", "backup", str(tmp_path / "b"), "--state", str(state)], ["wrong pw"])
    assert rc == 2 and "wrong passphrase" in out
    rc, out = _run_on_terminal(
        ["identity", "backup", str(tmp_path / "b"), "--state", str(state)], ["typed pw", "bk", "bk"]
    )
    assert rc == 0, out
    assert (tmp_path / "b").read_bytes()[:8] == b"KSTRLBAK"


def test_state_path_that_is_a_file(cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    _fails(cli("init-agent", "--name", "x", "--state", str(not_a_dir), "--machine-bound"), 3, str(not_a_dir))
    _fails(cli("identity", "show", "--state", str(not_a_dir)), 3, "cannot read")
    assert not_a_dir.read_text() == "x"

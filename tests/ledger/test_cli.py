"""``kestrel audit``: reading, verifying, exporting and proving need only the public key."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel._internal.paths import StateLayout
from kestrel.cli import main
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger
from kestrel.ledger.store import SEGMENT_MAGIC

from . import tamper

KESTREL = str(Path(sys.executable).parent / "kestrel")
N = 12


@pytest.fixture
def filled(agent_state, signer):
    with Ledger.open(StateLayout(agent_state).ledger, signer=signer) as led:
        for i in range(N):
            led.append("policy.decision" if i % 3 == 0 else "action.result", {"i": i})
    return agent_state


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def cli(*argv):
    """In-process CLI: a non-Kestrel exception (a traceback) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return subprocess.CompletedProcess(argv, rc, out.getvalue().encode(), err.getvalue().encode())


def cli_proc(*argv, **kw):
    """The real console script: exit code, and no traceback on stderr."""
    p = subprocess.run([KESTREL, *argv], capture_output=True, timeout=60, **kw)
    assert b"Traceback" not in p.stderr, p.stderr.decode()
    return p


def _segment(state):
    return sorted(StateLayout(state).ledger.glob("*.seg"))[-1]


def test_log_text_json_kind_since(filled, capsys):
    rc, out, _ = run(capsys, "audit", "log", "--state", str(filled))
    assert rc == 0 and len(out.splitlines()) == N and "policy.decision" in out
    assert out.splitlines()[-1].split()[0] == str(N - 1)  # newest last
    rc, out, _ = run(capsys, "audit", "log", "--json", "--kind", "policy.decision", "--state", str(filled))
    rows = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and [r["body"]["i"] for r in rows] == [0, 3, 6, 9] and all(len(r["digest"]) == 64 for r in rows)
    rc, out, _ = run(capsys, "audit", "log", "--since", "1h", "--state", str(filled))
    assert len(out.splitlines()) == N
    rc, out, _ = run(capsys, "audit", "log", "--since", "2999-01-01T00:00:00Z", "--state", str(filled))
    assert rc == 0 and out == ""
    rc, _, err = run(capsys, "audit", "log", "--since", "yesterday-ish", "--state", str(filled))
    assert rc == 64 and "--since" in err


def test_log_follow_shows_new_records(filled, signer):
    proc = subprocess.Popen([KESTREL, "audit", "log", "--follow", "--state", str(filled)], stdout=subprocess.PIPE)
    try:
        lines = [proc.stdout.readline() for _ in range(N)]
        assert lines[-1].split()[0] == str(N - 1).encode()
        with Ledger.open(StateLayout(filled).ledger, signer=signer) as led:
            led.append("sensor.fault", {"pin": 4})
        assert b"sensor.fault" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()


def test_verify_intact(filled, capsys, signer):
    rc, out, _ = run(capsys, "audit", "verify", "--state", str(filled))
    assert rc == 0 and f"ledger intact: {N} records" in out and signer.public_key.did in out
    rc, out, _ = run(capsys, "audit", "verify", "--json", "--state", str(filled))
    assert json.loads(out)["size"] == N and json.loads(out)["unsigned"] == 0


def test_verify_names_flipped_record(filled):
    seg = _segment(filled)
    data = seg.read_bytes()
    span = tamper.record_span(data, 5, len(SEGMENT_MAGIC))
    seg.write_bytes(tamper.flip_bit(data, (span.start + 40) * 8 + 2))
    p = cli_proc("audit", "verify", "--state", str(filled))
    assert p.returncode == 2 and b"record 5: bit_flip" in p.stderr


def test_verify_names_missing_record(filled):
    seg = _segment(filled)
    data = seg.read_bytes()
    seg.write_bytes(tamper.remove(data, tamper.record_span(data, 4, len(SEGMENT_MAGIC))))
    p = cli("audit", "verify", "--state", str(filled))
    assert p.returncode == 2 and b"record 4: missing" in p.stderr


def test_export_and_verify_with_only_the_did(filled, tmp_path, signer, capsys):
    out_file = tmp_path / "audit.kle"
    rc, out, _ = run(capsys, "audit", "export", str(out_file), "--state", str(filled))
    assert rc == 0 and out_file.read_bytes().startswith(b"KLEXPRT\x01")
    did = signer.public_key.did
    p = cli("audit", "verify", "--export", str(out_file), "--agent", did)
    assert p.returncode == 0 and f"ledger intact: {N} records".encode() in p.stdout
    other = SoftwareSigner.generate().public_key.did
    p = cli("audit", "verify", "--export", str(out_file), "--agent", other)
    assert p.returncode == 2 and b"bad_signature" in p.stderr
    data = out_file.read_bytes()
    out_file.write_bytes(data[: len(data) - 30])
    p = cli("audit", "verify", "--export", str(out_file), "--agent", did)
    assert p.returncode == 2 and b"truncated" in p.stderr


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", b"not a Kestrel ledger export"),
        (b"\x00garbage" * 50, b"not a Kestrel ledger export"),
        (b"KLEXPRT\x01" + b"\xff" * 64, b"corrupt"),
    ],
)
def test_verify_garbage_export(tmp_path, ed_signer, content, needle):
    f = tmp_path / "x.kle"
    f.write_bytes(content)
    p = cli("audit", "verify", "--export", str(f), "--agent", ed_signer.public_key.did)
    assert p.returncode == 2 and needle in p.stderr


def test_verify_usage_errors(tmp_path, ed_signer):
    assert cli("audit", "verify", "--export", str(tmp_path / "x")).returncode == 64
    p = cli("audit", "verify", "--export", str(tmp_path / "missing.kle"), "--agent", ed_signer.public_key.did)
    assert p.returncode == 3 and b"not found" in p.stderr
    p = cli("audit", "verify", "--export", str(tmp_path / "x"), "--agent", "did:web:example.com")
    assert p.returncode == 2 and b"did:key" in p.stderr


def test_prove_and_verify_proof(filled, tmp_path, signer):
    proof = tmp_path / "r7.proof"
    with open(proof, "wb") as fh:
        p = subprocess.run(
            [KESTREL, "audit", "prove", "7", "--binary", "--state", str(filled)], stdout=fh, stderr=subprocess.PIPE
        )
    assert p.returncode == 0, p.stderr
    did = signer.public_key.did
    p = cli("audit", "verify-proof", str(proof), "--agent", did)
    assert p.returncode == 0 and b"record 7 is in the log" in p.stdout and b'"i":7' in p.stdout
    p = cli("audit", "verify-proof", str(proof), "--agent", did, "--json")
    assert json.loads(p.stdout)["record"]["body"] == {"i": 7}
    p = cli("audit", "verify-proof", str(proof), "--agent", SoftwareSigner.generate().public_key.did)
    assert p.returncode == 2 and b"bad_signature" in p.stderr
    data = proof.read_bytes()
    idx = data.index(b"action.result")
    proof.write_bytes(data[:idx] + b"policy.decisi" + data[idx + 13 :])  # disclose an edited record
    p = cli("audit", "verify-proof", str(proof), "--agent", did)
    assert p.returncode == 2 and b"not proven" in p.stderr


@pytest.mark.parametrize("content", [b"", b"garbage", b"KLPROOF\x01\xc1", b"KLPROOF\x01\x93\x01\x02\x03"])
def test_garbage_proof(tmp_path, ed_signer, content):
    f = tmp_path / "bad.proof"
    f.write_bytes(content)
    p = cli_proc("audit", "verify-proof", str(f), "--agent", ed_signer.public_key.did)
    assert p.returncode == 2 and b"inclusion proof" in p.stderr


def test_prove_unknown_seq_and_terminal(filled, tmp_path, capsys):
    rc, _, err = run(capsys, "audit", "prove", "99", "-o", str(tmp_path / "p"), "--state", str(filled))
    assert rc == 2 and "no signed record 99" in err


def test_unreadable_or_missing_state(tmp_path, capsys):
    p = cli_proc("audit", "verify", "--state", str(tmp_path / "nope"))
    assert p.returncode == 3 and b"does not exist" in p.stderr
    f = tmp_path / "file"
    f.write_bytes(b"x")
    p = cli("audit", "log", "--state", str(f))
    assert p.returncode == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    p = cli("audit", "verify", "--state", str(empty))
    assert p.returncode != 0 and b"identity" in p.stderr


def test_ledger_path_not_a_directory(agent_state):
    (agent_state / "ledger").write_bytes(b"not a directory")
    p = cli("audit", "verify", "--state", str(agent_state))
    assert p.returncode == 3 and b"ledger" in p.stderr


def test_verify_does_not_need_a_passphrase_and_changes_nothing(filled):
    seg = _segment(filled)
    before = seg.read_bytes()
    p = cli_proc("audit", "verify", "--state", str(filled), env={"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0 and seg.read_bytes() == before


def test_saved_checkpoint_reveals_later_truncation(filled, tmp_path, signer):
    """A checkpoint kept by the owner catches a log cut back to an earlier, validly signed size."""
    p = cli("audit", "checkpoint", "--state", str(filled))
    assert p.returncode == 0 and p.stdout.startswith(f"kestrel/{signer.public_key.did}\n{N}\n".encode())
    kept = tmp_path / "cp.txt"
    kept.write_bytes(p.stdout)
    assert cli("audit", "verify", "--trusted", str(kept), "--state", str(filled)).returncode == 0
    seg = _segment(filled)
    data = seg.read_bytes()
    cut = tamper.record_span(data, 7, len(SEGMENT_MAGIC)).start
    seg.write_bytes(data[:cut])  # records 7.. gone: what is left is a valid log of 7 records
    p = cli("audit", "verify", "--trusted", str(kept), "--state", str(filled))
    assert p.returncode == 2 and b"record 7: truncated" in p.stderr
    kept.write_bytes(b"not a checkpoint\n")
    p = cli("audit", "verify", "--trusted", str(kept), "--state", str(filled))
    assert p.returncode == 2 and b"checkpoint" in p.stderr


def test_log_on_damaged_ledger_names_the_record(filled):
    seg = _segment(filled)
    data = seg.read_bytes()
    span = tamper.record_span(data, 9, len(SEGMENT_MAGIC))
    seg.write_bytes(tamper.flip_bit(data, (span.start + 20) * 8))
    p = cli("audit", "log", "--state", str(filled))
    assert p.returncode == 2 and b"record 9: bit_flip" in p.stderr
    assert p.stdout.count(b"\n") == 9  # the intact records before it were shown

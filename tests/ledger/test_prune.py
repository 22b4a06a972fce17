"""Pruning: whole old segments go, a signed base keeps the log verifiable, appendable and provable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from kestrel._internal.paths import StateLayout
from kestrel.cli import main
from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger, LedgerError, LedgerVerificationError, Reason, verify_export, verify_proof
from kestrel.ledger.base import BASE_MAGIC
from kestrel.ledger.checkpoint import sign_checkpoint
from kestrel.ledger.export import EXPORT_MAGIC
from kestrel.ledger.frame import BASE, encode_frame
from kestrel.ledger.merkle import Frontier, consistency_proof, inclusion_proof, verify_consistency
from kestrel.ledger.reader import iter_records, verify_dir
from kestrel.ledger.record import leaf_hash

ROOT = Path(__file__).resolve().parents[2]
SEG = 1500  # small segments: a few dozen records each


def _open(d: Path, signer, **kw) -> Ledger:
    return Ledger.open(d, signer=signer, max_segment_bytes=SEG, **kw)


def _fill(led: Ledger, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        led.append("action.result", {"i": i, "pad": "x" * 40})
    led.flush()


@pytest.fixture
def pruned(tmp_path, signer):
    d = tmp_path / "ledger"
    led = _open(d, signer)
    _fill(led, 120)
    raws = list(led.entries_raw(0))
    res = led.prune(70, reason="test")
    return led, d, raws, res


def test_prune_drops_whole_old_segments_only(pruned, signer):
    led, d, raws, res = pruned
    try:
        assert 0 < res.new_first_seq <= 70 and res.segments >= 2 and res.bytes_freed > 0
        assert led.first_seq == res.new_first_seq == res.first_seq + res.records
        seg_starts = sorted(int(p.name[:20]) for p in d.glob("*.seg"))
        assert seg_starts[0] == res.new_first_seq  # a kept segment starts exactly at the base
        kept = list(led.records())
        assert kept[0].seq == res.new_first_seq
        assert [r.raw for r in kept[: 120 - res.new_first_seq]] == raws[res.new_first_seq :]  # kept bytes unchanged
        (rec,) = list(led.records(kind="ledger.pruned"))
        assert rec.body["from"] == 0 and rec.body["to"] == res.new_first_seq and rec.body["reason"] == "test"
        assert rec.body["records"] == res.records and rec.body["segments"] == res.segments
        assert (d / "base").stat().st_mode & 0o777 == 0o600
        again = led.prune(res.new_first_seq)  # nothing below the base: a no-op
        assert again.records == 0 and led.first_seq == res.new_first_seq
    finally:
        led.close()


def test_pruned_ledger_reopens_appends_verifies_exports_proves(pruned, signer, tmp_path):
    led, d, raws, res = pruned
    led.close()
    led = _open(d, signer)
    try:
        assert led.first_seq == res.new_first_seq and led.size == 121
        _fill(led, 30, 1000)
        v = led.verify()
        assert v.size == 151 and v.first_seq == res.new_first_seq and v.signed_size == 151
        exp = tmp_path / "x.klexport"
        led.export(exp)
        ve = verify_export(exp.read_bytes(), signer.public_key)
        assert ve.size == 151 and ve.first_seq == res.new_first_seq and ve.root == v.root
        proof = verify_proof(led.prove(res.new_first_seq + 5), signer.public_key)
        assert proof.record.seq == res.new_first_seq + 5 and proof.checkpoint.size == 151
        with pytest.raises(LedgerError, match="pruned"):
            led.prove(res.new_first_seq - 1)
    finally:
        led.close()
    # the root of the pruned log is the root of the whole history
    full = Frontier()
    for raw in raws + [r.raw for r in iter_records(d, since_seq=120)]:
        full.append(leaf_hash(raw))
    assert full.root() == v.root


def test_audit_cli_on_a_pruned_ledger(tmp_path, signer, capsys):
    from .conftest import write_identity

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    write_identity(state, signer)
    led = _open(StateLayout(state).ledger, signer)
    _fill(led, 100)
    first = led.prune(60).new_first_seq
    led.close()
    assert main(["audit", "verify", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert f"verified from the signed base at {first}" in out
    assert main(["audit", "export", "--state", str(state), str(tmp_path / "e.bin")]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "--export", str(tmp_path / "e.bin"), "--agent", signer.public_key.did]) == 0
    assert "ledger intact: 101 records" in capsys.readouterr().out


def test_tampered_or_foreign_base_is_refused(pruned, signer):
    led, d, raws, res = pruned
    led.close()
    data = (d / "base").read_bytes()
    obj = msgpack.unpackb(data[len(BASE_MAGIC) :])
    # a frontier hash changed: the signed checkpoint no longer matches
    bad = dict(obj, frontier=[bytes(32)] + obj["frontier"][1:])
    (d / "base").write_bytes(BASE_MAGIC + msgpack.packb(bad, use_bin_type=True))
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, signer.public_key)
    assert e.value.reason is Reason.CORRUPT
    with pytest.raises(LedgerVerificationError):
        _open(d, signer)
    # a base signed by another key
    other = SoftwareSigner.generate()
    f = Frontier.from_hashes(obj["size"], obj["frontier"])
    foreign = dict(obj, checkpoint=sign_checkpoint(other, size=f.size, root=f.root()).note)
    (d / "base").write_bytes(BASE_MAGIC + msgpack.packb(foreign, use_bin_type=True))
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, signer.public_key)
    assert e.value.reason is Reason.BAD_SIGNATURE
    # a wrong prev: the first kept record does not chain to it
    (d / "base").write_bytes(BASE_MAGIC + msgpack.packb(dict(obj, prev=b"\x01" * 32), use_bin_type=True))
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, signer.public_key)
    assert e.value.seq in (obj["size"] - 1, obj["size"])
    (d / "base").write_bytes(b"garbage")
    with pytest.raises(LedgerVerificationError, match="not a ledger base"):
        verify_dir(d, signer.public_key)
    (d / "base").write_bytes(data)  # restored: fine again
    assert verify_dir(d, signer.public_key).first_seq == res.new_first_seq


def test_export_with_a_tampered_base_frame_is_refused(pruned, signer, tmp_path):
    led, d, raws, res = pruned
    try:
        led.export(tmp_path / "e.bin")
    finally:
        led.close()
    data = (tmp_path / "e.bin").read_bytes()
    good = (d / "base").read_bytes()[len(BASE_MAGIC) :]
    obj = msgpack.unpackb(good)
    forged = encode_frame(BASE, msgpack.packb(dict(obj, size=obj["size"] + 1), use_bin_type=True))
    tampered = data.replace(encode_frame(BASE, good), forged)
    assert tampered != data
    with pytest.raises(LedgerVerificationError):
        verify_export(tampered, signer.public_key)
    assert data.startswith(EXPORT_MAGIC) and verify_export(data, signer.public_key).first_seq == res.new_first_seq


def test_trusted_checkpoint_older_than_the_base_is_reported(tmp_path, signer):
    d = tmp_path / "ledger"
    led = _open(d, signer)
    _fill(led, 10)
    old = led.latest_checkpoint()
    _fill(led, 100, 10)
    led.prune(80)
    led.close()
    with pytest.raises(LedgerVerificationError) as e:
        verify_dir(d, signer.public_key, trusted=old)
    assert e.value.reason is Reason.TRUNCATED and "pruned" in str(e.value)


def test_interrupted_prune_leftover_segments_are_ignored_then_removed(tmp_path, signer):
    """A kill after the base is durable but before every old segment is unlinked."""
    d = tmp_path / "ledger"
    led = _open(d, signer)
    _fill(led, 120)
    before = {p.name: p.read_bytes() for p in d.glob("*.seg")}
    first = led.prune(90).new_first_seq
    led.close()
    for name, data in before.items():  # put the pruned segments back, as if unlink never ran
        if not (d / name).exists():
            (d / name).write_bytes(data)
    assert min(int(p.name[:20]) for p in d.glob("*.seg")) == 0
    assert verify_dir(d, signer.public_key).first_seq == first  # readers skip the leftovers
    assert next(iter_records(d)).seq == first
    led = _open(d, signer)  # the writer finishes the prune
    led.close()
    assert min(int(p.name[:20]) for p in d.glob("*.seg")) == first


def test_frontier_state_roundtrip_and_proofs_over_a_base():
    leaves = [bytes([i]) * 32 for i in range(37)]
    for n_base in (1, 4, 7, 16, 23):
        f = Frontier()
        for leaf in leaves[:n_base]:
            f.append(leaf)
        g = Frontier.from_hashes(n_base, f.hashes)
        assert g.size == n_base and g.root() == f.root() and g.hashes == f.hashes
        for i in range(n_base, 37):
            assert inclusion_proof(i, leaves[n_base:], base=g) == inclusion_proof(i, leaves)
        full = Frontier()
        for leaf in leaves:
            full.append(leaf)
        old = Frontier.from_hashes(n_base, f.hashes)
        proof = consistency_proof(n_base, leaves[n_base:], base=g)
        verify_consistency(n_base, 37, proof, old.root(), full.root())
    with pytest.raises(ValueError):
        Frontier.from_hashes(5, [bytes(32)])  # 5 = 4 + 1: two hashes
    with pytest.raises(ValueError, match="first kept leaf 8"):
        inclusion_proof(2, leaves[8:], base=Frontier.from_hashes(8, [bytes(32)]))
    with pytest.raises(ValueError, match="were pruned"):
        consistency_proof(3, leaves[8:], base=Frontier.from_hashes(8, [bytes(32)]))


def _crash_rounds(tmp_path: Path, rounds: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    d = tmp_path / "ledger"
    key = bytes(range(32))
    from cryptography.hazmat.primitives.asymmetric import ed25519

    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(key))
    acked_max = -1
    prunes = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(rounds):
        out = tmp_path / "child.out"
        with open(out, "w") as fh:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.ledger.prune_child", str(d), key.hex()], stdout=fh, cwd=ROOT, env=env
            )
            deadline = time.monotonic() + 20
            while "pruned" not in out.read_text() and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.02)  # kept: the pause of a poll for the child's "pruned" line (bounded above)
            time.sleep(rng.uniform(0.0, 0.3))  # kept: a random kill point after the prune is the thing under test
            child.send_signal(signal.SIGKILL)
            child.wait()
        lines = out.read_text().split("\n")
        acked = [int(x.split()[1]) for x in lines if x.startswith("acked ")]
        prunes += [int(x.split()[1]) for x in lines if x.startswith("pruned ")]
        assert acked, out.read_text()
        acked_max = max(acked_max, acked[-1])
        v = verify_dir(d, signer.public_key)  # a kill at any point leaves a log that verifies...
        assert v.size > acked_max  # ...and holds every receipted append
        led = Ledger.open(d, signer=signer, max_segment_bytes=SEG)  # ...and opens for writing
        try:
            assert led.verify().size == led.size
            assert [r.seq for r in led.records()] == list(range(led.first_seq, led.size))
        finally:
            led.close()
    return prunes


def test_sigkill_during_prune_leaves_a_verifiable_ledger(tmp_path):
    prunes = _crash_rounds(tmp_path, 6, seed=3)
    assert max(prunes) > 0  # the child really pruned


@pytest.mark.slow
def test_sigkill_during_prune_soak(tmp_path):
    assert max(_crash_rounds(tmp_path, 60, seed=11)) > 0

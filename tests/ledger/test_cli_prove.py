"""``kestrel audit prove`` for a new user: JSON text when redirected, a clear error for a record not
yet signed; ``audit log`` on a directory with no agent; ``identity show --did``."""

from __future__ import annotations

import json
import subprocess

from kestrel._internal.paths import StateLayout
from kestrel.ledger import Ledger
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.record import encode_record

from .test_cli import KESTREL, _segment, cli


def _filled(state, signer, n=6) -> bytes:
    with Ledger.open(StateLayout(state).ledger, signer=signer) as led:
        for i in range(n):
            led.append("test.event", {"i": i})
        return bytes.fromhex(list(led.records(since_seq=n - 1))[0].digest_hex)


def _append_unsigned(state, seq, prev) -> None:
    """A well-formed record after the last signed checkpoint (as if the agent had not signed it yet)."""
    raw = encode_record(seq=seq, time=1764000000.0, kind="action.result", body={"late": True}, prev=prev)
    with open(_segment(state), "ab") as fh:
        fh.write(encode_frame(RECORD, raw))


def test_prove_redirected_is_json_and_verifies(agent_state, signer, tmp_path):
    _filled(agent_state, signer)
    proof = tmp_path / "proof.json"
    with open(proof, "wb") as fh:
        p = subprocess.run(
            [KESTREL, "audit", "prove", "3", "--state", str(agent_state)], stdout=fh, stderr=subprocess.PIPE
        )
    assert p.returncode == 0, p.stderr
    doc = json.loads(proof.read_text())  # text, not binary
    assert doc["seq"] == 3 and doc["record"]["body"] == {"i": 3} and doc["agent"] == signer.public_key.did
    did = cli("identity", "show", "--did", "--state", str(agent_state)).stdout.decode().strip()
    assert did == signer.public_key.did
    p = cli("audit", "verify-proof", str(proof), "--agent", did)
    assert p.returncode == 0 and b"record 3 is in the log" in p.stdout
    doc["record"]["body"] = {"i": 4}  # an edited copy for the eye is not the proven record
    proof.write_text(json.dumps(doc))
    p = cli("audit", "verify-proof", str(proof), "--agent", did)
    assert p.returncode == 2 and b"edited" in p.stderr
    p = cli("audit", "prove", "3", "-o", str(tmp_path / "r3.proof"), "--state", str(agent_state))
    assert p.returncode == 0 and (tmp_path / "r3.proof").read_bytes().startswith(b"KLPROOF")


def test_prove_a_record_not_yet_signed(agent_state, signer, tmp_path):
    prev = _filled(agent_state, signer)
    _append_unsigned(agent_state, 6, prev)
    p = cli("audit", "prove", "6", "-o", str(tmp_path / "p.json"), "--state", str(agent_state))
    assert p.returncode == 2 and b"record 6 is not yet covered by a signed checkpoint" in p.stderr
    assert b"retry in a moment" in p.stderr and not (tmp_path / "p.json").exists()
    p = cli("audit", "prove", "60", "-o", str(tmp_path / "p.json"), "--state", str(agent_state))
    assert p.returncode == 2 and b"no signed record 60" in p.stderr


def test_log_without_an_agent_is_an_error(state_dir):
    p = cli("audit", "log", "--state", str(state_dir))
    assert p.returncode != 0 and b"init-agent" in p.stderr and not p.stdout

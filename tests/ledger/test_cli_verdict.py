"""``kestrel audit verify``: the verdict on stdout with --json (failures too), and --require-signed."""

from __future__ import annotations

import json

from kestrel._internal.paths import StateLayout
from kestrel.ledger import Ledger
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.record import encode_record
from kestrel.ledger.store import SEGMENT_MAGIC

from . import tamper
from .test_cli import _segment, cli, cli_proc


def _filled(state, signer, n=6):
    with Ledger.open(StateLayout(state).ledger, signer=signer) as led:
        for i in range(n):
            led.append("test.event", {"i": i})
        return bytes.fromhex(list(led.records(since_seq=n - 1))[0].digest_hex)


def _append_foreign_record(state, seq, prev):
    """What anyone with write access to the SD card can do: a well-formed record, valid CRC and chain."""
    raw = encode_record(seq=seq, time=1764000000.0, kind="action.result", body={"forged": True}, prev=prev)
    with open(_segment(state), "ab") as fh:
        fh.write(encode_frame(RECORD, raw))


def test_json_verdict_on_stdout_when_the_log_is_damaged(agent_state, signer):
    _filled(agent_state, signer)
    seg = _segment(agent_state)
    data = seg.read_bytes()
    seg.write_bytes(tamper.remove(data, tamper.record_span(data, 3, len(SEGMENT_MAGIC))))
    p = cli_proc("audit", "verify", "--json", "--state", str(agent_state))
    assert p.returncode == 2
    verdict = json.loads(p.stdout)
    assert verdict["ok"] is False and verdict["reason"] == "missing" and verdict["seq"] == 3
    assert b"record 3: missing" in p.stderr


def test_json_verdict_on_stdout_when_the_state_is_unusable(tmp_path):
    p = cli("audit", "verify", "--json", "--state", str(tmp_path / "nope"))
    assert p.returncode != 0 and json.loads(p.stdout)["ok"] is False


def test_unsigned_tail_passes_by_default_and_fails_with_require_signed(agent_state, signer):
    prev = _filled(agent_state, signer)
    _append_foreign_record(agent_state, 6, prev)
    p = cli("audit", "verify", "--json", "--state", str(agent_state))
    assert p.returncode == 0 and json.loads(p.stdout)["unsigned"] == 1
    assert b"not yet covered by a signed checkpoint" in p.stderr
    p = cli("audit", "verify", "--json", "--require-signed", "--state", str(agent_state))
    verdict = json.loads(p.stdout)
    assert p.returncode == 2 and (verdict["ok"], verdict["reason"], verdict["seq"]) == (False, "unsigned", 6)
    p = cli("audit", "verify", "--require-signed", "--state", str(agent_state))
    assert p.returncode == 2 and b"unsigned" in p.stderr


def test_torn_tail_fails_with_require_signed(agent_state, signer):
    _filled(agent_state, signer)
    with open(_segment(agent_state), "ab") as fh:
        fh.write(encode_frame(RECORD, b"\x85" + b"x" * 40)[:30])  # an unfinished write
    p = cli("audit", "verify", "--json", "--state", str(agent_state))
    assert p.returncode == 0 and json.loads(p.stdout)["torn_bytes"] == 30
    p = cli("audit", "verify", "--json", "--require-signed", "--state", str(agent_state))
    assert p.returncode == 2 and json.loads(p.stdout)["reason"] == "unsigned"


def test_signed_log_passes_require_signed(agent_state, signer):
    _filled(agent_state, signer)
    p = cli("audit", "verify", "--require-signed", "--state", str(agent_state))
    assert p.returncode == 0, p.stderr

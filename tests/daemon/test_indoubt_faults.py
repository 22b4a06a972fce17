"""SIGKILL `kestrel run` during bursts of every side-effecting action against real sinks (SMTP relay on
loopback, mosquitto, a pty, the sim GPIO chip): every effect a sink saw is in the log as allowed decision
+ (result | sent | in doubt). Harness: tools/faults/daemon_effects.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

_HARNESS = Path(__file__).resolve().parents[2] / "tools" / "faults" / "daemon_effects.py"


def _harness():
    spec = importlib.util.spec_from_file_location("daemon_effects", _HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _rec(seq, kind, **body):
    return SimpleNamespace(seq=seq, kind=kind, body=body)


def _digest(action, args):
    return f"{action}:{sorted(args.items())}"


def test_the_accounting_finds_unaccounted_effects():
    fx = _harness()
    mail = b"Subject: x\r\nMessage-ID: <m1@kestrel>\r\n\r\nbody\r\n"
    good = [
        _rec(1, "policy.decision", action="send_email", args_digest="e", decision="allow"),
        _rec(2, "action.result", action="send_email", decision=1, ok=True),
        _rec(3, "outbox.sending", id="m1", message_id="<m1@kestrel>", decision=1),
        _rec(4, "outbox.indoubt", id="m1", message_id="<m1@kestrel>", intent=3),
        _rec(5, "outbox.sending", id="m1", message_id="<m1@kestrel>", decision=1),
        _rec(6, "outbox.sent", id="m1", message_id="<m1@kestrel>", intent=5),
        _rec(
            7,
            "policy.decision",
            action="mqtt.publish",
            args_digest=_digest("mqtt.publish", fx.args_for("mqtt.publish", 9)),
            decision="allow",
        ),
        _rec(8, "action.indoubt", action="mqtt.publish", decision=7),
    ]
    sinks = fx.Sinks(mail=[mail, mail], mqtt=[b'{"n":9}'])
    assert fx.account(good, sinks, _digest).problems == []
    # a decision with no outcome, an outcome twice, a delivery with no attempt, a payload nobody decided
    bad = (
        good[:1] + good[2:4] + good[6:] + [_rec(9, "action.indoubt", decision=7), _rec(10, "action.result", decision=7)]
    )
    got = fx.account(bad, fx.Sinks(mail=[mail, mail], mqtt=[b'{"n":9}', b'{"n":10}']), _digest).problems
    assert any("decision at 1 has 0 outcomes" in p for p in got)
    assert any("decision at 7 has 3 outcomes" in p for p in got)
    assert any("delivered 2 times but 1 attempts" in p for p in got)
    assert any("'{\"n\":10}'" in p and "no allowed mqtt.publish" in p for p in got)
    # serial seen twice for one decision, the lamp at a level nobody decided
    got = fx.account(good, fx.Sinks(serial=["n5", "n5"], levels=[1]), _digest).problems
    assert any("serial line 'n5'" in p for p in got) and any("lamp went to 1" in p for p in got)


@pytest.mark.mosquitto
@pytest.mark.timeout(280)
def test_sigkill_during_action_bursts_5_times_leaves_every_effect_accounted_for(tmp_path):
    rep = _harness().run(5, workdir=tmp_path, seed=13, log=lambda m: None)
    a = rep.accounting
    assert a.problems == []
    assert sum(r.calls for r in rep.rounds) > 50  # the bursts really ran when the kills came
    assert a.mail_delivered and a.mqtt_seen and a.serial_seen and a.results > 50


@pytest.mark.slow
@pytest.mark.mosquitto
@pytest.mark.timeout(3000)
def test_sigkill_during_action_bursts_60_times(tmp_path):
    rep = _harness().run(60, workdir=tmp_path, log=lambda m: None)
    assert rep.accounting.problems == []
    assert rep.accounting.indoubt > 0  # kills did land between decisions and outcomes

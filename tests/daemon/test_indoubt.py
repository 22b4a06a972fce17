"""In-doubt actions: what a crash left between an intent and its outcome is recorded once at the next start."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from kestrel.daemon.effects import EffectTracker, InDoubtScan, Journal, read_journal, write_journal

from .conftest import in_thread, running, until
from .smtp_sink import SmtpSink

POLICY = "actions: [gpio.write, send_email]\n"
GPIO = """
    version: 1
    actuators:
      lamp: {type: gpio, pin: GPIO27}
"""


def _rec(seq: int, kind: str, **body):
    return SimpleNamespace(seq=seq, kind=kind, body=body)


# -- the pure parts ------------------------------------------------------------------------------
def test_scan_pairs_outcomes_with_their_decisions_and_reports_the_rest():
    scan = InDoubtScan().feed(
        [
            _rec(10, "policy.decision", action="gpio.write", args_digest="a", decision="allow"),
            _rec(11, "policy.decision", action="gpio.write", args_digest="a", decision="allow"),
            _rec(12, "policy.decision", action="send_email", args_digest="m", decision="deny"),
            _rec(13, "action.result", action="gpio.write", args_digest="a", decision=11, ok=True),
            _rec(14, "policy.decision", action="mqtt.publish", args_digest="p", decision="allow"),
            _rec(15, "action.indoubt", action="mqtt.publish", args_digest="p", decision=14),
            _rec(16, "outbox.sending", id="m1", message_id="<m1@kestrel>", decision=3, attempt=1),
            _rec(17, "outbox.sending", id="m2", message_id="<m2@kestrel>", decision=4, attempt=1),
            _rec(18, "outbox.sent", id="m2", message_id="<m2@kestrel>", intent=17, recipients=1),
        ]
    )
    assert [(i.seq, i.body["action"]) for i in scan.actions] == [(10, "gpio.write")]  # 11 has a result, 12 denied
    assert [(i.seq, i.body["id"]) for i in scan.mail] == [(16, "m1")]
    assert scan.finished_mail == {"m2": "outbox.sent"}
    assert scan.scanned == 9


def test_a_follow_up_decision_is_accounted_for_by_its_parent_s_outcome():
    records = [
        _rec(1, "policy.decision", action="fetch_data", args_digest="f", decision="allow"),
        _rec(2, "policy.decision", action="fetch_data", args_digest="r", decision="allow", parent=1),  # redirect
        _rec(3, "policy.decision", action="fetch_data", args_digest="g", decision="allow"),
        _rec(4, "policy.decision", action="fetch_data", args_digest="s", decision="allow", parent=3),
    ]
    open_ = InDoubtScan().feed([*records, _rec(5, "action.result", action="fetch_data", decision=1, ok=True)])
    assert [i.seq for i in open_.actions] == [3]  # 2 ended with 1; 4 is in doubt with 3, not on its own
    bogus = InDoubtScan().feed([_rec(1, "policy.decision", action="x", args_digest="a", decision="allow", parent="1")])
    assert [i.seq for i in bogus.actions] == [1]  # only an integer parent makes a follow-up


def test_scan_pairs_outcomes_without_a_decision_number_oldest_first():
    scan = InDoubtScan().feed(
        [
            _rec(1, "policy.decision", action="gpio.write", args_digest="a", decision="allow"),
            _rec(2, "policy.decision", action="gpio.write", args_digest="a", decision="allow"),
            _rec(3, "action.result", action="gpio.write", args_digest="a", ok=True),  # a pre-upgrade record
        ]
    )
    assert [i.seq for i in scan.actions] == [2]


def test_scan_counts_only_decisions_inside_a_daemon_run():
    records = [
        _rec(1, "daemon.started", pid=1),
        _rec(2, "policy.decision", action="gpio.write", args_digest="a", decision="allow"),
        _rec(3, "action.result", action="gpio.write", args_digest="a", decision=2, ok=True),
        _rec(4, "daemon.stopped", pid=1),
        _rec(5, "policy.decision", action="send_email", args_digest="m", decision="allow"),  # kestrel ask, no daemon
        _rec(6, "daemon.started", pid=2),
        _rec(7, "policy.decision", action="gpio.write", args_digest="b", decision="allow"),  # then a crash
    ]
    assert [i.seq for i in InDoubtScan(in_run=False).feed(records).actions] == [7]


def test_watermark_stays_below_every_intent_whose_outcome_is_not_durable():
    size = [100]
    t = EffectTracker(lambda: size[0])
    assert t.watermark() == 100
    a = t.begin()  # registered before its intent is appended: at most the intent's future seq
    size[0] = 105
    b = t.begin()
    assert t.watermark() == 100
    t.bind(a, 103)
    assert t.watermark() == 103
    t.end(a)
    assert t.watermark() == 105 and t.open == 1
    t.end(b)
    size[0] = 110
    assert t.watermark() == 110 and t.open == 0


def test_watermark_is_safe_against_concurrent_appends():
    """Threads append intents and outcomes to a counter 'ledger'; the watermark never passes an open intent."""
    lock = threading.Lock()
    size = [0]
    t = EffectTracker(lambda: size[0])
    open_seqs: set[int] = set()
    errors: list[str] = []

    def append() -> int:
        with lock:
            size[0] += 1
            return size[0] - 1

    def worker() -> None:
        for _ in range(2000):
            e = t.begin()
            seq = append()
            with lock:
                open_seqs.add(seq)
            t.bind(e, seq)
            append()  # the outcome
            with lock:
                open_seqs.discard(seq)
            t.end(e)

    def checker() -> None:
        for _ in range(5000):
            w = t.watermark()  # then whatever is still open (or opened since) must be at or above it
            with lock:
                snapshot = set(open_seqs)
            late = [s for s in snapshot if s < w]
            if late:
                errors.append(f"watermark {w} passed open intents {late[:3]}")

    threads = [threading.Thread(target=worker) for _ in range(4)] + [threading.Thread(target=checker)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]


def test_journal_round_trip_and_a_damaged_journal_reads_as_none(tmp_path):
    path = tmp_path / "effects.json"
    assert read_journal(path) is None
    write_journal(path, Journal(42, clean=True))
    assert read_journal(path) == Journal(42, True)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for bad in (
        b"{",
        b'{"format": 1, "scan_from": -1, "clean": false}',
        b'{"format": 2}',
        b"[]",
        b'{"format": 1, "scan_from": "3", "clean": false}',
    ):
        path.write_bytes(bad)
        assert read_journal(path) is None  # the caller then scans the whole ledger: never less


# -- the daemon ----------------------------------------------------------------------------------
def _journal(agent) -> Journal | None:
    return read_journal(agent.state / "data" / "effects.json")


def _crash_after(agent, *records: tuple[str, dict]) -> list[int]:
    """What a run that died leaves: its records, and its journal still saying 'not clean'."""
    j = _journal(agent)
    seqs = [agent.ledger.append(kind, body).seq for kind, body in records]
    write_journal(agent.state / "data" / "effects.json", Journal(j.scan_from if j else 0, clean=False))
    return seqs


async def test_clean_stop_needs_no_scan_and_reports_nothing(agent):
    async with running(agent, GPIO, policy=POLICY) as d:
        await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
        assert d.control_status()["indoubt"]["actions"] == 0
    j = _journal(agent)
    assert j is not None and j.clean and j.scan_from == agent.ledger.size
    assert agent.kinds("daemon.stopped")
    async with running(agent, GPIO) as d:
        st = d.control_status()["indoubt"]
        assert st == {"actions": 0, "mail": 0, "scanned": 0, "previous_stop": "clean", "open": 0}
    # every result names its decision
    results = agent.kinds("action.result")
    decisions = {r.seq for r in agent.ledger.records(kind="policy.decision")}
    assert results and all(r["decision"] in decisions for r in results)


async def test_a_crashed_run_s_open_decisions_are_recorded_once_before_new_work(agent):
    async with running(agent, GPIO, policy=POLICY):
        pass
    open_seq, done_seq = _crash_after(
        agent,
        ("daemon.started", {"pid": 1}),
        ("policy.decision", {"action": "gpio.write", "args_digest": "x" * 64, "decision": "allow"}),
        ("policy.decision", {"action": "gpio.write", "args_digest": "y" * 64, "decision": "allow"}),
    )[1:]
    agent.ledger.append(
        "action.result", {"action": "gpio.write", "args_digest": "y" * 64, "decision": done_seq, "ok": True}
    )
    async with running(agent, GPIO) as d:
        st = d.control_status()["indoubt"]
        assert st["actions"] == 1 and st["previous_stop"] == "crashed" and st["scanned"] >= 4
        await d.control_call("gpio.write", {"actuator": "lamp", "value": 1}, source="test")
    kinds = [r.kind for r in agent.ledger.records()]
    doubt = [r for r in agent.ledger.records(kind="action.indoubt")]
    assert len(doubt) == 1 and doubt[0].body["decision"] == open_seq
    assert doubt[0].body["action"] == "gpio.write" and doubt[0].body["args_digest"] == "x" * 64
    started = [i for i, k in enumerate(kinds) if k == "daemon.started"][-1]
    new_decision = max(r.seq for r in agent.ledger.records(kind="policy.decision"))
    assert doubt[0].seq < started < new_decision  # before any new work
    # recorded once: a crash right after the in-doubt records does not repeat them
    write_journal(agent.state / "data" / "effects.json", Journal(open_seq - 1, clean=False))
    async with running(agent, GPIO) as d:
        assert d.control_status()["indoubt"]["actions"] == 0
    assert len(agent.kinds("action.indoubt")) == 1


async def test_without_a_journal_the_whole_ledger_is_scanned_once(agent):
    async with running(agent, GPIO, policy=POLICY):
        pass
    agent.ledger.append("daemon.started", {"pid": 1})
    seq = agent.ledger.append(
        "policy.decision", {"action": "gpio.write", "args_digest": "z" * 64, "decision": "allow"}
    ).seq
    (agent.state / "data" / "effects.json").unlink()
    async with running(agent, GPIO) as d:
        st = d.control_status()["indoubt"]
        assert st["previous_stop"] == "unknown" and st["actions"] == 1 and st["scanned"] == seq + 1
    assert [b["decision"] for b in agent.kinds("action.indoubt")] == [seq]


def _mail_config(port: int) -> str:
    return f"""
    version: 1
    smtp: {{host: 127.0.0.1, port: {port}, from: bot@device.test, timeout: 2}}
    outbox: {{retry_initial: 0.1, retry_max: 0.3}}
    """


async def test_mail_handed_over_when_the_daemon_died_is_reported_and_sent_again_with_its_message_id(agent):
    sink = SmtpSink()
    with sink as box:
        async with running(agent, _mail_config(sink.port), policy=POLICY) as d:
            r = await d.control_call("send_email", {"to": "ops@example.com", "subject": "once"}, source="t")
            await until(lambda: box.messages and not d.outbox.pending(), what="delivered")
        mid = r["queued"]
        sent = agent.kinds("outbox.sent")
        sending = [r for r in agent.ledger.records(kind="outbox.sending")]
        assert len(sending) == 1 and sent[0]["intent"] == sending[0].seq
        assert sending[0].body["message_id"] == f"<{mid}@kestrel>" == sent[0]["message_id"]
        decision = sending[0].body["decision"]
        assert agent.kinds("action.result")[-1]["decision"] == decision
        assert f"Message-ID: <{mid}@kestrel>".encode() in box.messages[0][2]
        # a crash after the relay took a second message but before outbox.sent reached flash:
        # the file is still there and its attempt has no outcome
        from kestrel.daemon.outbox import OutboxMessage

        m = OutboxMessage("1764111111111-0a1b2c3d", ("ops@example.com",), "twice", "b", 1764111111.0, decision)
        (agent.state / "data" / "outbox" / f"{m.id}.json").write_bytes(m.to_json())
        intent = _crash_after(
            agent,
            ("daemon.started", {"pid": 1}),
            ("outbox.sending", {"id": m.id, "message_id": m.message_id, "attempt": 1, "decision": decision}),
        )[1]
        box.messages.append(("bot@device.test", ["ops@example.com"], b"Message-ID: " + m.message_id.encode()))
        async with running(agent, _mail_config(sink.port)) as d:
            assert d.control_status()["indoubt"]["mail"] == 1
            await until(lambda: len(box.messages) == 3 and not d.outbox.pending(), what="sent again")
        doubt = agent.kinds("outbox.indoubt")
        assert doubt == [
            {
                "id": m.id,
                "message_id": m.message_id,
                "attempt": 1,
                "decision": decision,
                "intent": intent,
                "reason": doubt[0]["reason"],
            }
        ]
        again = [r for r in agent.ledger.records(kind="outbox.sending") if r.body["id"] == m.id][-1]
        assert again.seq > intent and agent.kinds("outbox.sent")[-1]["intent"] == again.seq
        assert box.messages[2][2].count(f"Message-ID: {m.message_id}".encode()) == 1  # the same Message-ID


async def test_mail_whose_sent_record_is_on_flash_is_not_sent_again(agent):
    sink = SmtpSink()
    with sink as box:
        async with running(agent, _mail_config(sink.port), policy=POLICY):
            pass
        from kestrel.daemon.outbox import OutboxMessage

        m = OutboxMessage("1764111111112-0a1b2c3d", ("ops@example.com",), "done", "b", 1764111111.0, 7)
        (agent.state / "data" / "outbox").mkdir(exist_ok=True, mode=0o700)
        (agent.state / "data" / "outbox" / f"{m.id}.json").write_bytes(m.to_json())
        intent = _crash_after(
            agent,
            ("daemon.started", {"pid": 1}),
            ("outbox.sending", {"id": m.id, "message_id": m.message_id, "attempt": 1}),
        )[1]
        agent.ledger.append("outbox.sent", {"id": m.id, "message_id": m.message_id, "intent": intent, "recipients": 1})
        async with running(agent, _mail_config(sink.port)) as d:
            assert d.control_status()["indoubt"]["mail"] == 0
            assert d.outbox.pending() == []  # the crash came between outbox.sent and the unlink
        assert box.messages == []


async def test_kestrel_status_prints_the_in_doubt_line(agent, capsys):
    import argparse

    from kestrel.cli.daemon import _status

    async with running(agent, GPIO, policy=POLICY):
        pass
    _crash_after(
        agent,
        ("daemon.started", {"pid": 1}),
        ("policy.decision", {"action": "gpio.write", "args_digest": "x" * 64, "decision": "allow"}),
    )
    async with running(agent, GPIO):
        args = argparse.Namespace(state=str(agent.state), wait=0.0, json=False)
        assert await in_thread(_status, args, []) == 0
    out = capsys.readouterr().out
    assert "in doubt 1 actions, 0 mail deliveries left unfinished by the last run (crashed stop)" in out


async def test_an_action_the_hosted_planner_runs_is_accounted_for_like_any_other(agent):
    from kestrel.agent.llm import ScriptedModel

    from .test_ask import CONFIG, FAN_ON, TOOLS, ask
    from .test_ask import POLICY as ASK_POLICY

    async with running(agent, CONFIG, policy=ASK_POLICY) as d:
        d.asks.model = ScriptedModel([FAN_ON, '{"final": "the fan is on"}'])
        await in_thread(ask, agent.state, "turn on the fan", tools=TOOLS)
        assert d.effects.open == 0  # nothing left registered once the outcome is on flash
    allowed = [
        r.seq
        for r in agent.ledger.records(kind="policy.decision")
        if r.body["action"] == "gpio.write" and r.body["decision"] == "allow"
    ]
    done = [b for b in agent.kinds("action.result") if b["action"] == "gpio.write"]
    assert len(allowed) == 1 and [b["decision"] for b in done] == allowed


async def test_a_start_that_failed_before_recording_the_doubts_never_marks_the_stop_clean(agent):
    import textwrap

    from kestrel.daemon.config import parse_device_config
    from kestrel.daemon.runtime import Daemon
    from kestrel.io.boards import load_profile
    from kestrel.io.gpio import open_pin_factory

    async with running(agent, GPIO, policy=POLICY):
        pass
    _crash_after(
        agent,
        ("daemon.started", {"pid": 1}),
        ("policy.decision", {"action": "gpio.write", "args_digest": "x" * 64, "decision": "allow"}),
    )
    factory = open_pin_factory(load_profile("sim"))
    d = Daemon(
        config=parse_device_config(textwrap.dedent(GPIO), source="device.yaml"),
        state_dir=agent.state,
        ledger=agent.ledger,
        factory=factory,
        agent_id=agent.signer.public_key.did,
    )
    try:
        await d.shutdown()  # as after a start() that raised before it got to the in-doubt scan
    finally:
        factory.close()
    assert _journal(agent).clean is False and len(agent.kinds("daemon.stopped")) == 1  # only the first run's
    async with running(agent, GPIO) as d:
        assert d.control_status()["indoubt"]["actions"] == 1


async def test_a_temporary_refusal_after_the_intent_is_an_outcome_and_the_retry_a_new_attempt(agent):
    sink = SmtpSink()
    with sink as box:
        box.tempfail_data = 1
        async with running(agent, _mail_config(sink.port), policy=POLICY) as d:
            await d.control_call("send_email", {"to": "ops@example.com", "subject": "retry"}, source="t")
            await until(lambda: box.messages and not d.outbox.pending(), what="delivered on the second attempt")
            assert d.effects.open == 0
    attempts = [r for r in agent.ledger.records(kind="outbox.sending")]
    assert [a.body["attempt"] for a in attempts] == [1, 2]
    deferred, sent = agent.kinds("outbox.deferred"), agent.kinds("outbox.sent")
    assert [b["intent"] for b in deferred] == [attempts[0].seq] and "451" in deferred[0]["error"]
    assert [b["intent"] for b in sent] == [attempts[1].seq] and len(box.messages) == 1

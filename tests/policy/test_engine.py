"""PolicyEngine: the active bundle's policy, decisions in the ledger, rate limits across restarts."""

from __future__ import annotations

import hashlib
import json

from kestrel.policy import PolicyEngine, args_digest

SEED = b"actions: [send_email, schedule_event]\nrestrictions:\n  - no_external_network unless explicitly permitted\n"
LIMITED = b"actions:\n  - action: ping\n    rate: {count: 2, per: 1h}\n"


def test_no_bundle_denies_and_records(state_dir, ledger) -> None:
    engine = PolicyEngine(state_dir, ledger)
    d = engine.decide("send_email", {"to": "a@b.example"})
    assert not d.allowed and d.rule == "default-deny"
    [rec] = [r.body for r in ledger.records(kind="policy.decision")]
    assert rec["decision"] == "deny" and rec["policy"] == "0" * 64 and rec["bundle"] is None


def test_every_decision_recorded(state_dir, ledger, install) -> None:
    bundle = install(SEED)
    engine = PolicyEngine(state_dir, ledger)
    allow = engine.decide("send_email", {"to": "a@b.example"})
    deny = engine.decide("format_disk", {"device": "/dev/sda"})
    assert allow.allowed and not deny.allowed
    recs = [r.body for r in ledger.records(kind="policy.decision")]
    assert [(r["action"], r["decision"], r["rule"]) for r in recs] == [
        ("send_email", "allow", "actions[0]"),
        ("format_disk", "deny", "default-deny"),
    ]
    assert recs[0]["policy"] == hashlib.sha256(SEED).hexdigest() and recs[0]["bundle"] == bundle
    assert recs[1]["args_digest"] == args_digest({"device": "/dev/sda"})
    assert "/dev/sda" not in json.dumps(recs)  # digests only, never the arguments


def test_engine_follows_new_bundle(state_dir, ledger, install) -> None:
    install(SEED)
    engine = PolicyEngine(state_dir, ledger)
    assert not engine.decide("ping").allowed
    install(LIMITED)
    assert engine.decide("ping").allowed
    assert not engine.decide("send_email", {"to": "a@b.example"}).allowed


def test_rate_limit_survives_restart(state_dir, ledger, install) -> None:
    install(LIMITED)
    assert PolicyEngine(state_dir, ledger).decide("ping").allowed
    assert PolicyEngine(state_dir, ledger).decide("ping").allowed
    d = PolicyEngine(state_dir, ledger).decide("ping")
    assert not d.allowed and "rate limit" in d.reason
    saved = json.loads((state_dir / "data" / "policy-rate.json").read_text())
    assert len(saved["hits"]["ping"]) == 2
    assert (state_dir / "data" / "policy-rate.json").stat().st_mode & 0o777 == 0o600


def test_corrupt_rate_state_fails_closed(state_dir, ledger, install) -> None:
    install(LIMITED + b"  - schedule_event\n")
    rate = state_dir / "data" / "policy-rate.json"
    rate.parent.mkdir(mode=0o700)
    rate.write_text("{not json")
    engine = PolicyEngine(state_dir, ledger)
    assert not engine.decide("ping").allowed
    event = {"summary": "check", "start": "2026-05-01T09:30:00Z"}
    assert engine.decide("schedule_event", event).allowed  # limits only affect rate-limited rules
    assert (state_dir / "data" / "policy-rate.corrupt").read_text() == "{not json"
    assert not PolicyEngine(state_dir, ledger).decide("ping").allowed  # still closed after restart


def test_the_engine_decides_on_the_policy_its_source_gives(state_dir, ledger) -> None:
    """The policy comes from an injected source (the daemon passes kestrel.ota.policy_source): the engine
    re-loads when the source's version changes, and a source that fails denies everything until it heals."""
    from kestrel.errors import DataError
    from kestrel.policy import parse_policy
    from kestrel.policy.source import FixedPolicySource

    ping = parse_policy(b"actions: [ping]\n")
    assert PolicyEngine(state_dir, ledger, source=FixedPolicySource(ping, "b1")).decide("ping").allowed
    assert not PolicyEngine(state_dir, ledger, source=FixedPolicySource(None)).decide("ping").allowed

    class Switchable:
        def __init__(self) -> None:
            self.found: object = (ping, "b1")
            self.v = 1
            self.loads = 0

        def load(self):
            self.loads += 1
            if isinstance(self.found, Exception):
                raise self.found
            return self.found

        def version(self):
            return self.v

    src = Switchable()
    engine = PolicyEngine(state_dir, ledger, source=src)
    assert engine.decide("ping").allowed and engine.decide("ping").allowed and src.loads == 1  # probed, not loaded
    src.found, src.v = DataError("slot damaged"), 2
    d = engine.decide("ping")
    assert not d.allowed and engine.load_error == "slot damaged"
    src.found = (parse_policy(b"actions: [pong]\n"), "b2")  # same version: retried because the last load failed
    assert engine.decide("pong").allowed and engine.bundle_digest == "b2"
    assert [r.body["bundle"] for r in ledger.records(kind="policy.decision")][-3:] == ["b1", None, "b2"]


def test_the_default_source_is_the_active_ota_slot(state_dir, ledger, install) -> None:
    from kestrel.ota import policy_source

    digest = install(SEED)
    engine = PolicyEngine(state_dir, ledger)
    assert type(engine.source) is type(policy_source(state_dir)) and engine.bundle_digest == digest
    assert engine.decide("send_email", {"to": "a@b.example"}).allowed


def test_the_package_exports_the_evaluate_function_whatever_the_import_order() -> None:
    import subprocess
    import sys

    code = (
        "import kestrel.policy.engine\nfrom kestrel.policy import evaluate\nimport kestrel.policy as p\n"
        "from kestrel.policy.evaluate import evaluate as e\nassert callable(evaluate) and p.evaluate is e\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

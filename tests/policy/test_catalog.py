"""The action catalog (kestrel.policy.catalog) says what the daemon's handlers accept."""

from __future__ import annotations

import pytest

from kestrel.daemon.calendar import parse_event_args
from kestrel.daemon.config import BUILTIN_ACTIONS
from kestrel.daemon.fetch import parse_fetch_args
from kestrel.daemon.outbox import parse_email_args
from kestrel.errors import KestrelError
from kestrel.policy.catalog import KNOWN_ACTIONS


def test_callable_actions_are_the_daemons() -> None:
    assert {n for n, s in KNOWN_ACTIONS.items() if s.callable} == set(BUILTIN_ACTIONS)


GOOD = {
    "send_email": ({"to": "a@example.com", "subject": "s", "body": "b"}, lambda a: parse_email_args(a, now=0.0)),
    "schedule_event": (
        {
            "summary": "s",
            "title": "t",
            "start": "2026-05-01T09:00:00Z",
            "end": "2026-05-01T10:00:00Z",
            "location": "l",
            "description": "d",
        },
        parse_event_args,
    ),
    "fetch_data": ({"url": "https://example.com/"}, parse_fetch_args),
}


@pytest.mark.parametrize("action", sorted(GOOD))
def test_catalog_keys_are_the_parsers(action: str) -> None:
    args, parse = GOOD[action]
    parse(args)  # the keys used here are accepted ...
    assert set(args) <= set(KNOWN_ACTIONS[action].args)  # ... and listed
    with pytest.raises(KestrelError, match="unknown argument"):
        parse({**args, "not_a_key": "x"})
    for key in KNOWN_ACTIONS[action].args:  # every listed key is accepted by the parser
        try:
            parse({**args, key: args.get(key, "x")})
        except KestrelError as exc:
            assert "unknown argument" not in exc.message, key


def test_call_help_lists_the_actions(capsys) -> None:
    from kestrel.cli import main

    with pytest.raises(SystemExit):
        main(["call", "--help"])
    out = capsys.readouterr().out
    for name, spec in KNOWN_ACTIONS.items():
        assert (name in out) == spec.callable

"""Whatever a model emits, parsing yields a valid proposal or a ProposalError, never anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel.agent.actions import BUILTIN_TOOLS
from kestrel.agent.schema import schema_errors
from kestrel.agent.tools import Final, Handoff, ProposalError, ToolCall, parse_proposal

SPECS = {t.name: t for t in BUILTIN_TOOLS}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _check(text: str) -> None:
    try:
        proposal = parse_proposal(text, SPECS)
    except ProposalError as exc:
        assert exc.code in ("invalid-json", "bad-shape", "unknown-action", "bad-args")
        return
    assert isinstance(proposal, (ToolCall, Final, Handoff))
    if isinstance(proposal, ToolCall):
        assert schema_errors(dict(proposal.args), SPECS[proposal.action].parameters) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    _check(text)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SPECS) + ["door.unlock", ""]), JSON, st.dictionaries(st.text(max_size=8), JSON, max_size=2)
)
def test_arbitrary_calls(action, args, extra):
    _check(json.dumps({"action": action, "args": args, **extra}))


@pytest.mark.slow
@settings(max_examples=20000, deadline=None)
@given(st.sampled_from(sorted(SPECS)), JSON)
def test_arbitrary_calls_long(action, args):
    _check(json.dumps({"action": action, "args": args}))

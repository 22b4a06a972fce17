"""The compiled evaluator decides a fixed corpus exactly as the recorded reference did."""

from __future__ import annotations

import json

import pytest

from kestrel.policy import args_digest, parse_policy

from . import corpus

GOLDEN = json.loads(corpus.GOLDEN.read_text())


def test_args_digest_values_are_unchanged() -> None:
    assert [args_digest(a) for a in corpus.ARGSETS] == GOLDEN["args_digests"]


@pytest.mark.parametrize("name", sorted(corpus.policies()))
def test_decisions_match_the_recorded_corpus(name: str) -> None:
    text = corpus.policies()[name]
    want = GOLDEN["policies"][name]
    assert parse_policy(text).digest == want["policy_digest"]
    got = corpus.outcomes(text)
    assert got and len(got) == len(want["decisions"])
    for case, row, (outcome, arg_index) in zip(corpus.cases(text), got, want["decisions"], strict=True):
        expected = GOLDEN["outcomes"][outcome] + [GOLDEN["args_digests"][arg_index]]
        assert row == expected, (name, case, corpus.ARGSETS[case[1]])

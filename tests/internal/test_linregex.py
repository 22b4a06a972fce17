"""Linear-time regular expressions: Python's answers on the common subset, bounded work on any pattern."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kestrel._internal.linregex import MAX_DFA_STATES, RegexError, compile_linear

_ATOMS = st.sampled_from(
    [
        "a",
        "b",
        "ab",
        ".",
        "[ab]",
        "[^a]",
        "\\d",
        "\\w",
        "\\s",
        "x",
        "[a-c]",
        "\\.",
        "(?:a|b)",
        "(a)",
        "[a\\-z]",
        "\\W",
        "\\D",
        "é",
        "[\\d_]",
        "\\n",
        "[.]",
        "(?P<n>b)",
        "a{0}",
    ]
)


def _patterns(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return _ATOMS
    sub = _patterns(depth - 1)
    return st.one_of(
        _ATOMS,
        st.tuples(sub, sub).map("".join),
        st.tuples(sub, sub).map(lambda t: f"(?:{t[0]}|{t[1]})"),
        st.tuples(sub, st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "*?", "+?"])).map(
            lambda t: f"(?:{t[0]}){t[1]}"
        ),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    _patterns(3),
    st.lists(st.text(alphabet="abx.-_ 1é\n", max_size=8), min_size=1, max_size=6),
    st.sampled_from(["", "^", "$", "^$"]),
)
def test_same_answers_as_python_re(pattern: str, texts: list[str], anchors: str) -> None:
    pattern = ("^" if "^" in anchors else "") + pattern + ("$" if "$" in anchors else "")
    try:
        full, search = compile_linear(pattern), compile_linear(pattern, mode="search")
    except RegexError:
        return  # too many states for this (random) pattern: refused, never slow
    for text in texts:
        assert full.fullmatch(text) == bool(re.fullmatch(pattern, text, re.ASCII)), (pattern, text)
        assert search.search(text) == bool(re.search(pattern, text, re.ASCII)), (pattern, text)


def test_case_insensitive_search() -> None:
    r = compile_linear("turn (on|off) the LAMP", mode="search", ignore_case=True)
    assert r.search("please TURN ON the lamp now") and not r.search("turn up the lamp")


@pytest.mark.parametrize(
    "pattern, text",
    [
        ("(a+)+", "a" * 34 + "!"),
        ("(a|aa)+$", "a" * 5000 + "!"),
        ("(a|a)*b", "a" * 5000),
        (".*.*.*.*.*x", "y" * 5000),
        ("(\\w+\\s?)+$", "word " * 1000 + "!"),
        ("(x+x+)+y", "x" * 5000),
        ("(.*a){12}", "a" * 5000 + "b"),
    ],
)
def test_catastrophic_patterns_answer_in_one_pass(pattern: str, text: str) -> None:
    """Each of these takes Python's backtracking engine seconds to centuries; here one table step a character."""
    r = compile_linear(pattern)
    assert r.fullmatch(text) is False
    assert r.states < MAX_DFA_STATES


@pytest.mark.parametrize(
    "pattern, why",
    [
        ("(a)\\1", "backreferences"),
        ("(?=a)a", "lookahead"),
        ("(?<!a)b", "lookahead"),
        ("(?i)a", "inline flags"),
        ("a\\b", "not supported"),
        ("a^b", "anchors"),
        ("(a", "missing ')'"),
        ("a)", "unbalanced"),
        ("[a", "unterminated"),
        ("a{2000}", "repetition counts"),
        ("a**", "cannot directly follow"),
        ("*a", "nothing to repeat"),
        ("[z-a]", "bad character range"),
        ("\\q", "unknown escape"),
        ("(?>a)", "atomic"),
        ("a++", "possessive"),
        ("(a|b)*a(a|b){14}", "too complex"),
    ],
)
def test_unsupported_or_oversized_patterns_are_refused_with_a_reason(pattern: str, why: str) -> None:
    with pytest.raises(RegexError) as err:
        compile_linear(pattern)
    assert why in str(err.value) and err.value.pos >= 0

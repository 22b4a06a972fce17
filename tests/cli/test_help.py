"""Help that a new user can rely on: one wording for --state, every environment variable listed,
suggestions for mistyped commands."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from kestrel.cli import build_parser, main
from kestrel.cli._common import ENVIRONMENT, STATE_HELP

RUNTIME = Path(__file__).resolve().parents[2] / "runtime" / "kestrel"


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_state_has_one_wording_everywhere() -> None:
    seen = 0
    for path, p in _parsers(build_parser()):
        for a in p._actions:
            if "--state" in a.option_strings:
                seen += 1
                assert a.help == STATE_HELP, " ".join(path)
    assert seen >= 30


@pytest.mark.parametrize(
    "command",
    [("call",), ("status",), ("sim",), ("run",), ("policy", "explain"), ("set-policy",), ("ask",), ("audit", "log")],
)
def test_commands_that_reach_an_agent_take_state(command) -> None:
    parsers = dict(_parsers(build_parser()))
    assert any("--state" in a.option_strings for a in parsers[command]._actions)


def test_every_environment_variable_the_runtime_reads_is_in_help(capsys) -> None:
    used = set()
    for f in RUNTIME.rglob("*.py"):
        used |= set(re.findall(r"\"(KESTREL_[A-Z_]+)\"", f.read_text()))
    listed = {name for name, _ in ENVIRONMENT}
    assert used <= listed, f"not in `kestrel --help`: {sorted(used - listed)}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in listed)


@pytest.mark.parametrize(
    "argv, suggestion", [(["stauts"], "'status'"), (["audit", "lgo"], "'log'"), (["polcy", "check", "x"], "'policy'")]
)
def test_mistyped_commands_get_a_suggestion(argv, suggestion, capsys) -> None:
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert f"did you mean {suggestion}?" in err and "Traceback" not in err

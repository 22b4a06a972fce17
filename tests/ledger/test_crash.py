"""SIGKILL an appending process many times in a row: every receipted append survives."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_HARNESS = Path(__file__).resolve().parents[2] / "tools" / "faults" / "ledger_crash.py"


def _harness():
    spec = importlib.util.spec_from_file_location("ledger_crash", _HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_sigkill_20_times_loses_no_receipted_append(tmp_path):
    rounds = _harness().run(20, ledger_dir=tmp_path / "ledger", modes=["batched", "strict"], seed=7, log=lambda m: None)
    assert len(rounds) == 20
    assert sum(r.receipted for r in rounds) > 20  # the child really was appending when killed
    assert rounds[-1].size >= sum(r.receipted for r in rounds)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the log grows every round and every reopen verifies all of it (strict codec included)
def test_sigkill_soak_200_times(tmp_path):
    rounds = _harness().run(200, ledger_dir=tmp_path / "ledger", modes=["batched", "strict"], log=lambda m: None)
    assert all(r.receipted >= 0 for r in rounds) and len(rounds) == 200

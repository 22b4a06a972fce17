"""Mistakes a command can see for itself are reported before it asks for (or needs) a passphrase."""

from __future__ import annotations

import pytest

from kestrel.cli import main
from kestrel.identity import create_identity


@pytest.fixture
def locked(tmp_path, monkeypatch) -> str:
    """A passphrase keystore, no passphrase given, no terminal: reaching the keystore would fail."""
    monkeypatch.delenv("KESTREL_PASSPHRASE", raising=False)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    create_identity(state, name="locked", passphrase=b"pw")
    return str(state)


@pytest.mark.parametrize(
    "argv, said",
    [
        (["deploy", "--model", "local:/no/such/folder"], "no model directory at /no/such/folder"),
        (["deploy", "--model", "no-such-recipe"], "is not built"),
        (["memory", "add", "hello", "--model", "no-such-model"], "is not installed"),
        (["agent-connect", "did:key:zBAD"], "did:key"),
        (["agent-connect", "alice"], "not a did:key identifier"),
    ],
)
def test_cheap_check_first(locked, capsys, argv, said) -> None:
    rc = main([*argv, "--state", locked])
    err = capsys.readouterr().err
    assert rc != 0 and said in err and "passphrase" not in err, err

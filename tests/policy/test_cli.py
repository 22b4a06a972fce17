"""``kestrel policy check`` and ``kestrel policy explain``."""

from __future__ import annotations

import pytest

from kestrel.cli import main
from kestrel.cli.policy import parse_extra_args
from kestrel.errors import UsageError

from .test_parse import BAD, FULL


def test_check_ok(tmp_path, capsys) -> None:
    (tmp_path / "p.yaml").write_text(FULL)
    assert main(["policy", "check", str(tmp_path / "p.yaml")]) == 0
    assert "ok (6 rules, 4 actions allowed" in capsys.readouterr().out


def test_check_reports_every_error(tmp_path, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    assert main(["policy", "check", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 15 and lines[-1].endswith(f"14 error(s) in {path}")
    assert lines[0].startswith(f"{path}:5:19: ")
    assert any(line.startswith(f"{path}:20:1: ") for line in lines)


def test_check_missing_file(tmp_path, capsys) -> None:
    assert main(["policy", "check", str(tmp_path / "none.yaml")]) == 3
    assert "not found" in capsys.readouterr().err


def test_explain(tmp_path, capsys) -> None:
    (tmp_path / "p.yaml").write_text(FULL)
    base = ["policy", "explain", "--policy", str(tmp_path / "p.yaml"), "--at", "1764064800"]  # Tue 10:00 UTC
    assert main(base + ["--action", "send_email", "--to", "bob@example.com", "--to", "amy@example.org"]) == 0
    assert capsys.readouterr().out.startswith("ALLOW send_email: rule actions[0]")
    assert main(base + ["--action", "send_email", "--to", "bob@example.com", "--to=x@competitor.example"]) == 1
    assert "rule deny[0]: never mail the competitor" in capsys.readouterr().out
    assert main(base + ["--action", "set_pin", "--pin", "17", "--value", "3", "--json"]) == 1
    assert '"rule": "actions[1]"' in capsys.readouterr().out
    assert main(base + ["--action", "shutdown"]) == 1
    assert "default-deny" in capsys.readouterr().out


def test_explain_without_policy_denies(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("KESTREL_STATE", str(tmp_path / "state"))
    assert main(["policy", "explain", "--action", "send_email"]) == 1
    assert "no policy is installed" in capsys.readouterr().out


def test_extra_args_parsing() -> None:
    assert parse_extra_args(["--to", "a", "--to", "b", "--dry-run=yes"]) == {"to": ["a", "b"], "dry_run": "yes"}
    for bad in (["stray"], ["--"], ["-x"]):
        with pytest.raises(UsageError):
            parse_extra_args(bad)
    # `policy explain` reads action arguments exactly as `call` does: a bare flag is true
    from kestrel.cli.daemon import parse_extra_args as call_args

    assert call_args is parse_extra_args
    assert parse_extra_args(["--dry-run", "--to", "a", "--urgent"]) == {"dry_run": True, "to": "a", "urgent": True}

"""``kestrel set-policy`` for a new user: cheap checks before any prompt or file, one owner prompt (twice to
confirm a new key), warnings about unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.cli import main
from kestrel.identity import create_identity

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "ota" / "policies" / "demo.yaml"


@pytest.fixture
def owner_env(tmp_path, monkeypatch) -> Path:
    key = tmp_path / "owner" / "owner.key"
    monkeypatch.setenv("KESTREL_OWNER_KEY", str(key))
    monkeypatch.delenv("KESTREL_OWNER_PASSPHRASE", raising=False)
    return key


def _prompts(monkeypatch) -> list[str]:
    asked: list[str] = []

    def prompt(what, *, confirm):
        asked.append(what + (" (confirm)" if confirm else ""))
        return b"owner pass"

    monkeypatch.setattr("kestrel.identity.secrets.has_tty", lambda: True)
    monkeypatch.setattr("kestrel.identity.secrets.prompt_passphrase", prompt)
    return asked


def test_no_identity_fails_before_any_prompt_or_file(tmp_path, owner_env, monkeypatch, capsys):
    asked = _prompts(monkeypatch)
    state = tmp_path / "empty"
    state.mkdir(mode=0o700)
    rc = main(["set-policy", str(DEMO), "--state", str(state)])
    assert rc != 0 and "init-agent" in capsys.readouterr().err
    assert asked == [] and not owner_env.exists() and not (state / "ota").exists()


def test_first_use_asks_once_and_applies(tmp_path, owner_env, monkeypatch, capsys):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    create_identity(state, name="t", machine_bound=True, machine_id_path=_machine_id(tmp_path))
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(_machine_id(tmp_path)))
    asked = _prompts(monkeypatch)
    assert main(["set-policy", str(DEMO), "--state", str(state)]) == 0
    assert asked == ["owner key (confirm)"]  # one prompt (with its confirmation), not four
    assert "applied bundle" in capsys.readouterr().out
    asked.clear()
    assert main(["set-policy", str(DEMO), "--state", str(state)]) == 0
    assert asked == ["owner key"]


def test_a_key_the_device_does_not_trust_fails_before_its_prompt(tmp_path, owner_env, monkeypatch, capsys):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(_machine_id(tmp_path)))
    create_identity(state, name="t", machine_bound=True)
    asked = _prompts(monkeypatch)
    assert main(["set-policy", str(DEMO), "--state", str(state)]) == 0
    other = tmp_path / "other" / "owner.key"
    assert main(["owner", "init", "--key", str(other)]) == 0
    asked.clear()
    rc = main(["set-policy", str(DEMO), "--state", str(state), "--key", str(other)])
    assert rc != 0 and asked == [] and "not in this device's trust root" in capsys.readouterr().err


def test_warnings_for_unknown_names(tmp_path, owner_env, monkeypatch, capsys):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("KESTREL_MACHINE_ID_FILE", str(_machine_id(tmp_path)))
    create_identity(state, name="t", machine_bound=True)
    _prompts(monkeypatch)
    policy = tmp_path / "p.yaml"
    policy.write_text("actions: [gpio.wrte]\n")
    assert main(["set-policy", str(policy), "--state", str(state)]) == 0
    assert f"{policy}:1:11: warning: unknown action 'gpio.wrte'" in capsys.readouterr().err


def _machine_id(tmp_path: Path) -> Path:
    p = tmp_path / "machine-id"
    if not p.exists():
        p.write_text("0123456789abcdef0123456789abcdef\n")
    return p

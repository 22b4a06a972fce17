"""UI tokens (pure check + file shell), `kestrel ui token`, and the `ui:` section of the device config."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from kestrel.daemon.config import UiConfig, parse_device_config
from kestrel.daemon.ui.tokens import MAX_TOKENS, TokenEntry, TokenFile, check, parse_token
from kestrel.errors import ConfigError, DataError, UsageError
from tests.daemon.test_process import _env
from tests.integration.conftest import KESTREL

NOW = 1_800_000_000.0


def test_check_is_pure_and_names_its_reason():
    tf_token = "kui_0123abcd_" + "Z" * 43
    import hashlib

    entries = {"0123abcd": TokenEntry("0123abcd", hashlib.sha256(tf_token.encode()).hexdigest(), NOW - 10, NOW + 10)}
    assert check(entries, tf_token, now=NOW).ok
    assert check(entries, f"  {tf_token}\n", now=NOW).ok  # pasted with whitespace
    assert check(entries, tf_token, now=NOW + 10).reason == "expired"
    assert check(entries, tf_token[:-1] + "Y", now=NOW).reason == "unknown"
    assert check(entries, "kui_99999999_" + "Z" * 43, now=NOW).reason == "unknown"
    for bad in ("", "Bearer", "kui_0123abcd_short", "kui_0123ABCD_" + "Z" * 43, "x" * 10000):
        assert check(entries, bad, now=NOW).reason == "malformed"
    assert parse_token(tf_token) == ("0123abcd", "Z" * 43)


def test_token_file_stores_only_hashes_privately(state_dir):
    tf = TokenFile(state_dir)
    issued = tf.issue(ttl_s=60, now=NOW, label="tablet")
    raw = tf.path.read_text()
    assert issued.token not in raw and issued.token[13:] not in raw
    assert stat.S_IMODE(os.stat(tf.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tf.path.parent).st_mode) == 0o700
    again = TokenFile(state_dir)  # a second reader (the daemon) sees it
    assert again.check(issued.token, now=NOW + 1).ok
    assert again.check(issued.token, now=NOW + 61).reason == "expired"
    assert again.revoke(issued.entry.id) and not again.revoke(issued.entry.id)
    assert tf.check(issued.token, now=NOW + 1).reason == "unknown"  # noticed by the first reader too


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sudo kestrel ui token on a state dir of another user)")
def test_root_hands_the_token_file_to_the_state_dirs_owner(state_dir):
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chown(state_dir, 4242, 4242)
    TokenFile(state_dir).issue(ttl_s=60, now=NOW)
    tf = TokenFile(state_dir)
    for p in (tf.path, tf.path.parent, tf.path.parent.parent):
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (4242, 4242), p
    assert stat.S_IMODE(os.stat(tf.path).st_mode) == 0o600


def test_token_file_limits_and_corruption(state_dir):
    tf = TokenFile(state_dir)
    for ttl in (0, -5, 367 * 86400):
        with pytest.raises(UsageError):
            tf.issue(ttl_s=ttl, now=NOW)
    for _ in range(MAX_TOKENS):
        tf.issue(ttl_s=60, now=NOW)
    with pytest.raises(UsageError):
        tf.issue(ttl_s=60, now=NOW)
    assert len(tf.issue(ttl_s=60, now=NOW + 120).token) > 0  # expired ones make room
    for garbage in (
        b"{",
        b"[]",
        b'{"format": 2, "tokens": []}',
        b'{"format": 1, "tokens": [{"id": "x"}]}',
        b"\xff" * 100,
        b"{" * 100000,
    ):
        tf.path.write_bytes(garbage)
        with pytest.raises(DataError) as err:
            TokenFile(state_dir).entries()
        assert str(tf.path) in err.value.message and "kestrel ui token" in (err.value.hint or "")


def kestrel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*KESTREL, *args], capture_output=True, text=True, timeout=60, env=_env())


def test_cli_ui_token(state_dir):
    r = kestrel("ui", "token", "--state", str(state_dir))
    assert r.returncode == 64 and "no agent" in r.stderr and "Traceback" not in r.stderr
    (state_dir / "identity").mkdir(parents=True)
    r = kestrel("ui", "token", "--state", str(state_dir), "--expires", "2h", "--label", "kitchen")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert parse_token(token) is not None and "shown once" in r.stderr
    assert TokenFile(state_dir).check(token, now=__import__("time").time()).ok
    listed = kestrel("ui", "token", "--state", str(state_dir), "--list", "--json")
    entries = json.loads(listed.stdout)
    assert [e["label"] for e in entries] == ["kitchen"] and token[13:] not in listed.stdout
    assert kestrel("ui", "token", "--state", str(state_dir), "--expires", "400d").returncode == 64
    assert kestrel("ui", "token", "--state", str(state_dir), "--revoke", "nope").returncode == 64
    assert kestrel("ui", "token", "--state", str(state_dir), "--revoke", entries[0]["id"]).returncode == 0
    assert TokenFile(state_dir).entries() == {}


def test_ui_config_section():
    assert parse_device_config("version: 1\n").ui is None  # off by default
    assert parse_device_config("version: 1\nui: {enabled: false}\n").ui is None
    assert parse_device_config("version: 1\nui: {}\n").ui == UiConfig()
    assert parse_device_config("version: 1\nui: {listen: '0.0.0.0:9000', session_ttl: 600}\n").ui == UiConfig(
        "0.0.0.0", 9000, 600.0
    )
    assert parse_device_config("version: 1\nui: {listen: '[::1]:0'}\n").ui == UiConfig("::1", 0)
    for bad, where in (
        ("ui: {listen: 8080}", "ui.listen"),
        ("ui: {listen: 'host'}", "ui.listen"),
        ("ui: {listen: 'h:70000'}", "ui.listen"),
        ("ui: {port: 1}", "ui.port"),
        ("ui: {session_ttl: 1}", "ui.session_ttl"),
        ("ui: on", "ui"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_device_config(f"version: 1\n{bad}\n", source="dev.yaml")
        assert "dev.yaml:2" in err.value.message and where in err.value.message, err.value.message

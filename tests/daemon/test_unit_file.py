"""image/systemd/kestrel.service: notify type, watchdog, memory cap and hardening are all there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "image" / "systemd" / "kestrel.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_declares_notify_watchdog_memory_and_hardening():
    s = _settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) > 0 and s["MemoryMax"][0].endswith("M")
    assert "kestrel run" in s["ExecStart"][0] and "--state /var/lib/kestrel" in s["ExecStart"][0]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] == ["/var/lib/kestrel"]
    assert s["CapabilityBoundingSet"] == [""] and s["DevicePolicy"] == ["closed"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and "is not executable" not in line and "/usr/bin/kestrel" not in line
    ]
    assert problems == []

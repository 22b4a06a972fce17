"""Fixtures for the image recipe and first-boot tests: a built overlay, owner keys, fake roots."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
BIN = Path(sys.executable).parent
KESTREL = str(BIN / "kestrel")
for p in (IMAGE, IMAGE / "firstboot"):  # kimage and the first-boot modules are not installed
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

MACHINE_ID = "0123456789abcdef0123456789abcdef"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: boots the qemu-arm64 lab image under qemu-system-aarch64 (TCG)")


PASSPHRASE = "owner passphrase for tests"


def kestrel(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full.pop("KESTREL_STATE", None)
    proc = subprocess.run(
        [KESTREL, *args], capture_output=True, text=True, env=full, stdin=subprocess.DEVNULL, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kestrel {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@dataclass(frozen=True)
class Owner:
    did: str
    key: Path
    passphrase_file: Path

    def bundle(self, out: Path, *, group: str = "lab", counter: int = 1, sign: bool = True) -> Path:
        policy = REPO / "ota" / "policies" / "seed.yaml"
        kestrel("bundle", "build", "--policy", str(policy), "--counter", str(counter), "--group", group, "-o", str(out))
        if sign:
            kestrel("bundle", "sign", str(out), "--key", str(self.key), "--passphrase-file", str(self.passphrase_file))
        return out


@pytest.fixture(scope="session")
def owner(tmp_path_factory: pytest.TempPathFactory) -> Owner:
    d = tmp_path_factory.mktemp("owner")
    pw = d / "pass"
    pw.write_text(PASSPHRASE)
    pw.chmod(0o600)
    kestrel("owner", "init", "--key", str(d / "owner.key"), "--passphrase-file", str(pw))
    out = kestrel("owner", "show", "--key", str(d / "owner.key")).stdout
    did = next(tok for tok in out.split() if tok.startswith("did:key:"))
    return Owner(did=did, key=d / "owner.key", passphrase_file=pw)


@pytest.fixture(scope="session")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rpi4 overlay, built once per session by the real recipe (image/build.sh)."""
    out = tmp_path_factory.mktemp("image-out")
    proc = subprocess.run(
        [str(IMAGE / "build.sh"), "--board", "rpi4", "--stage", "rootfs-overlay", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "rpi4" / "overlay"


@dataclass(frozen=True)
class FakeSystem:
    """A system root holding the image's units, a boot partition directory and a machine id."""

    root: Path
    boot: Path
    machine_id: Path

    def write_owner(self, **settings: object) -> Path:
        self.boot.mkdir(parents=True, exist_ok=True)
        path = self.boot / "owner.json"
        path.write_text(json.dumps({"format": "kestrel-owner/1", **settings}))
        return path

    def firstboot_cmd(self, *extra: str) -> list[str]:
        """The first-boot command line against this root; ``--user`` (this user) comes last."""
        return [
            sys.executable,
            str(IMAGE / "firstboot" / "firstboot.py"),
            "--root",
            str(self.root),
            "--boot",
            str(self.boot),
            "--kestrel",
            KESTREL,
            "--machine-id-file",
            str(self.machine_id),
            "--model-path",
            str(self.root / "proc-model"),
            "--tpm-device",
            str(self.root / "dev/tpmrm0"),
            *extra,
            "--user",
            pwd.getpwuid(os.getuid()).pw_name,
        ]

    def firstboot(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """Run the image's first-boot program exactly as the unit does, against this root."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
        return subprocess.run(
            self.firstboot_cmd(*extra),
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=300,
            preexec_fn=lambda: os.umask(0o077),
        )  # UMask=0077

    @property
    def state(self) -> Path:
        return self.root / "var/lib/kestrel"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: `kestrel ota apply` connects to STATE/run/control.sock, and an
    AF_UNIX path longer than 107 bytes (pytest's tmp_path below /var/lib/...) fails to connect."""
    d = Path(tempfile.mkdtemp(prefix="kfb", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def system(short_tmp: Path, overlay: Path) -> FakeSystem:
    tmp_path = short_tmp
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("kestrel.service", "kestrel-firstboot.service"):
        shutil.copy2(overlay / "usr/lib/systemd/system" / unit, units / unit)
    (root / "var/lib/kestrel").mkdir(parents=True, mode=0o700)  # as tmpfiles.d creates it
    (root / "proc-model").write_text("Raspberry Pi 4 Model B Rev 1.5\0")
    mid = tmp_path / "machine-id"
    mid.write_text(MACHINE_ID + "\n")
    return FakeSystem(root=root, boot=tmp_path / "boot" / "kestrel", machine_id=mid)

"""The rootfs-overlay stage, built by the real recipe, checked file by file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import IMAGE, REPO


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_overlay_has_units_firstboot_users_and_wheel(overlay: Path) -> None:
    units = overlay / "usr/lib/systemd/system"
    for unit in ("kestrel.service", "kestrel-firstboot.service"):
        assert (units / unit).read_bytes() == (IMAGE / "systemd" / unit).read_bytes()
        assert _mode(units / unit) == 0o644
    wants = overlay / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "kestrel-firstboot.service") == "/usr/lib/systemd/system/kestrel-firstboot.service"
    assert not (wants / "kestrel.service").exists(), "kestrel.service is enabled by first boot, not by the image"
    assert os.readlink(overlay / "usr/bin/kestrel") == "/opt/kestrel/bin/kestrel"  # the unit's ExecStart
    for name in ("firstboot.py", "firstboot_settings.py"):
        assert (overlay / "usr/lib/kestrel/firstboot" / name).read_bytes() == (IMAGE / "firstboot" / name).read_bytes()
    state = overlay / "var/lib/kestrel"
    assert state.is_dir() and _mode(state) == 0o700 and not any(state.iterdir()), "no identity in the image"
    sysusers = (overlay / "usr/lib/sysusers.d/kestrel.conf").read_text()
    assert "u kestrel" in sysusers
    assert (overlay / "usr/share/doc/kestrel/image.md").is_file()
    assert "LABEL=KESTRELBOOT" in (overlay / "etc/fstab").read_text()
    assert "ROOTPART=LABEL=KESTREL_ROOT" in (overlay / "etc/default/raspi-firmware").read_text()
    assert json.loads((overlay / "boot/firmware/kestrel/owner.json.example").read_text())["format"] == "kestrel-owner/1"
    firstboot_unit = (units / "kestrel-firstboot.service").read_text()
    assert "ConditionPathExists=!/var/lib/kestrel/identity" in firstboot_unit
    assert "Before=kestrel.service" in firstboot_unit and "Type=oneshot" in firstboot_unit
    dropin = (overlay / "etc/systemd/system/kestrel.service.d/10-firstboot.conf").read_text()
    assert "ConditionPathExists=/var/lib/kestrel/identity" in dropin


def test_wheel_is_complete_and_requirements_point_at_it(overlay: Path) -> None:
    wheels = sorted((overlay / "opt/kestrel/wheels").glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].name.endswith("-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for needed in (
        "kestrel/cli/__init__.py",
        "kestrel/io/board_profiles/rpi4.yaml",
        "kestrel/io/board_profiles/jetson-orin-nano.yaml",
        "kestrel/data/device.yaml",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    req = (overlay / "opt/kestrel/requirements.txt").read_text()
    assert f"file:///opt/kestrel/wheels/{wheels[0].name}" in req and "[tpm,gpio,inference]" in req


def test_manifest_lists_every_entry_with_its_hash(overlay: Path) -> None:
    manifest = json.loads((overlay / "usr/share/kestrel/image-manifest.json").read_text())
    assert manifest["format"] == "kestrel-image-manifest/1" and manifest["build"]["board"] == "rpi4"
    listed = {e["path"]: e for e in manifest["entries"]}
    actual = {p.relative_to(overlay).as_posix() for p in overlay.rglob("*")} - {"usr/share/kestrel/image-manifest.json"}
    assert set(listed) == actual
    for rel, entry in listed.items():
        path = overlay / rel
        if entry["type"] == "file":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], rel
            assert int(entry["mode"], 8) == _mode(path)
        elif entry["type"] == "link":
            assert os.readlink(path) == entry["target"]
    epoch = manifest["build"]["source_date_epoch"]
    assert all(p.lstat().st_mtime == epoch for p in overlay.rglob("*")), "mtimes are SOURCE_DATE_EPOCH"


def test_units_pass_systemd_analyze_verify(overlay: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = overlay / "usr/lib/systemd/system"
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(units / "kestrel-firstboot.service"),
            str(units / "kestrel.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    # The only complaints allowed: the executables that exist only inside the image.
    expected = {
        "kestrel-firstboot.service: Command /opt/kestrel/bin/python3 is not executable: No such file or directory",
        "kestrel.service: Command /usr/bin/kestrel is not executable: No such file or directory",
    }
    unexpected = [ln for ln in lines if ln not in expected]
    assert not unexpected, unexpected
    assert lines, "systemd-analyze verified nothing"  # it must have loaded both units


def test_sysusers_creates_the_user_in_the_device_groups(overlay: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-sysusers") is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(overlay / "usr/lib/sysusers.d/kestrel.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    assert any(
        ln.startswith("kestrel:") and ln.endswith(":/var/lib/kestrel:/usr/sbin/nologin") for ln in passwd.splitlines()
    )
    groups = {ln.split(":")[0]: ln.split(":")[3] for ln in (tmp_path / "etc/group").read_text().splitlines()}
    for group in ("gpio", "dialout", "tss"):
        assert "kestrel" in groups[group].split(","), group


def _build(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMAGE / "build.sh"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )


def _snapshot_repo(dest: Path) -> str:
    """Commit a copy of the work tree into a new repository (others edit the shared tree meanwhile)."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() or src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_AUTHOR_DATE": "@1700000000 +0000",
        "GIT_COMMITTER_DATE": "@1700000000 +0000",
    }
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(dest), *cmd], check=True, capture_output=True, env=env)
    return subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_overlay_from_a_commit_is_reproducible(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    commit = _snapshot_repo(repo)
    manifests = []
    for n in range(2):
        proc = subprocess.run(
            [
                str(repo / "image/build.sh"),
                "--out",
                str(tmp_path / f"out{n}"),
                "--board",
                "rpi4",
                "--stage",
                "rootfs-overlay",
                "--ref",
                "HEAD",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        manifests.append((tmp_path / f"out{n}/rpi4/overlay/usr/share/kestrel/image-manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    build = json.loads(manifests[0])["build"]
    assert build["source"] == commit and build["source_date_epoch"] == 1700000000


def test_dry_run_prints_every_stage_and_runs_nothing(tmp_path: Path) -> None:
    # an empty cache: a warm one (this machine's) would take the base system from it, no debootstrap
    proc = _build(tmp_path, "--board", "rpi4", "--dry-run", "--cache", str(tmp_path / "empty-cache"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in (
        "pip wheel",
        "/opt/kestrel/bin/pip install",
        "systemd-sysusers",
        "mkfs.vfat",
        "mkfs.ext4",
        "sfdisk",
        "raspi-firmware",
    ):
        assert needle in out, needle
    assert "debootstrap --foreign" in out or "mmdebstrap --arch=arm64" in out
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--board", "pi9000"), "invalid choice"),
        (("--board", "rpi4", "--stage", "rootfs"), "rootfs-overlay first"),
    ],
)
def test_bad_invocations_fail_clearly(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = _build(tmp_path, *args)
    assert proc.returncode in (1, 2, 64) and message in proc.stderr and "Traceback" not in proc.stderr


def test_jetson_overlay_has_no_pi_boot_files(tmp_path: Path) -> None:
    proc = _build(tmp_path, "--board", "jetson-orin-nano", "--stage", "rootfs-overlay")
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "jetson-orin-nano/overlay"
    assert (root / "usr/lib/systemd/system/kestrel-firstboot.service").is_file()
    assert not (root / "etc/default/raspi-firmware").exists() and not (root / "etc/fstab").exists()
    tar = subprocess.run(
        [str(IMAGE / "build.sh"), "--out", str(tmp_path), "--board", "jetson-orin-nano", "--stage", "image"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert tar.returncode == 0, tar.stderr
    names = subprocess.run(
        ["tar", "-tvf", str(tmp_path / "jetson-orin-nano/kestrel-jetson-orin-nano-overlay.tar")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "./usr/lib/kestrel/firstboot/firstboot.py" in names
    assert all(" 0/0 " in line for line in names.splitlines()), "owned by root in the tarball"
    refused = _build(tmp_path, "--board", "jetson-orin-nano", "--stage", "rootfs")
    assert refused.returncode == 64 and "L4T" in refused.stderr
    assert (
        json.loads((root / "usr/share/kestrel/image-manifest.json").read_text())["build"]["board"] == "jetson-orin-nano"
    )

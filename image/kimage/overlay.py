"""Stage ``rootfs-overlay``: everything Kestrel adds to a Debian rootfs, as a directory tree.

Needs no root and no network: tests build it here. The rootfs stage copies the tree into the
rootfs and installs the wheel set into the /opt/kestrel venv. Layout and manifest: docs/image.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .boards import ImageBoard
from .steps import BuildError, Runner

__all__ = ["build_overlay", "write_manifest", "MANIFEST", "ROOT_LABEL", "BOOT_LABEL", "DEFAULT_EXTRAS"]

MANIFEST = "usr/share/kestrel/image-manifest.json"
ROOT_LABEL, BOOT_LABEL, DATA_LABEL = "KESTREL_ROOT", "KESTRELBOOT", "KESTREL_DATA"  # FAT labels: <= 11 chars
DEFAULT_EXTRAS = ("tpm", "gpio", "inference")
_UNITS = ("kestrel.service", "kestrel-firstboot.service")
_FIRSTBOOT = ("firstboot.py", "firstboot_settings.py")
_LAB_UNITS = ("kestrel-vtpm.service", "kestrel-gpio-sim.service", "kestrel-testchan.service")
_LAB_WANTS = {
    "kestrel-vtpm.service": "sysinit.target",
    "kestrel-gpio-sim.service": "multi-user.target",
    "kestrel-testchan.service": "multi-user.target",
}
_LAB_FILES = ("testchan.py", "gpio-sim-setup")
_LAB_DROPIN = """# Kestrel lab image: the vTPM and the gpio-sim chip are set up before first boot and the daemon.
[Unit]
After=kestrel-vtpm.service kestrel-gpio-sim.service
"""
# Under TCG the daemon's start (imports, TPM key load) takes minutes, not seconds: emulation, not a fault.
_LAB_DAEMON = """# Kestrel lab image: full-system emulation (TCG) is 10-50x slower than a Pi; give the start and the
# watchdog room so that the lab tests the product's behaviour, not the emulator's speed.
[Service]
TimeoutStartSec=10min
WatchdogSec=2min
"""
_DATA_DROPIN = f"""# Kestrel image: the state directory is the data partition ({DATA_LABEL});
# never run on the root fs below it.
[Unit]
RequiresMountsFor=/var/lib/kestrel
"""

_FSTAB = """# Kestrel image: root ext4 and the boot FAT partition (owner settings in /boot/firmware/kestrel).
LABEL={root}  /              ext4  rw,noatime,errors=remount-ro             0 1
LABEL={boot}  /boot/firmware vfat  rw,noatime,fmask=0077,dmask=0077,flush   0 2
# The state directory (identity, ledger, bundles) on its own partition: an A/B root switch keeps it.
# nofail: a missing or damaged data partition leaves the device up (kestrel.service then does not start).
LABEL={data} /var/lib/kestrel ext4 rw,noatime,nodev,nosuid,noexec,nofail,x-systemd.device-timeout={timeout} 0 2
"""


def memory_dropin(profile_text: str, *, board: str) -> str:
    """kestrel.service's MemoryMax/MemoryHigh from the board profile's memory_budget_mb."""
    m = re.search(r"^memory_budget_mb:\s*(\d+)\s*(#.*)?$", profile_text, re.M)
    if not m:
        raise BuildError(f"board profile {board} has no memory_budget_mb", hint="see docs/board-profiles.md")
    budget = int(m.group(1))
    return (
        f"# From board_profiles/{board}.yaml (memory_budget_mb: {budget}), written by the image recipe.\n"
        f"[Service]\nMemoryMax={budget}M\nMemoryHigh={budget * 3 // 4}M\n"
    )


_BOOT_README = """Kestrel first-boot provisioning (docs/image.md)

Before the first boot, put here (all optional):
  owner.json      your owner key(s) and threshold; see owner.json.example
  device.yaml     the device config (docs/device-config.md)
  one *.kbundle   a signed policy bundle targeting a group listed in owner.json

On first boot the device creates its own AgentID (in its TPM if it has one), applies these
files, deletes them from this partition and writes agent.json (its AgentID) here.
If something is wrong, firstboot-error.txt says what: fix the files and boot again.
"""

_OWNER_EXAMPLE = {
    "format": "kestrel-owner/1",
    "owners": ["did:key:z6Mk...your owner key (kestrel owner show)"],
    "threshold": 1,
    "name": "greenhouse-1",
    "groups": ["greenhouse"],
    "keystore": "auto",
}


def _git(repo: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BuildError(
            f"git {' '.join(args)} failed in {repo}: {exc}", hint="run the recipe from a git checkout of Kestrel"
        ) from None


def source_tree(repo: Path, dest: Path, *, ref: str | None) -> str:
    """Copy the sources to build from into ``dest``; return the version string recorded."""
    if ref:  # reproducible: exactly a commit
        commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", commit], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return commit
    files = _git(repo, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    for rel in filter(None, files):
        src = repo / rel
        if src.is_file() or src.is_symlink():  # symlinks stay links (io/board_profiles -> board_profiles)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    head = _git(repo, "rev-parse", "HEAD")
    dirty = _git(repo, "status", "--porcelain")
    return head + ("-worktree" if dirty else "")


def build_wheel(src: Path, wheel_dir: Path, *, epoch: int, runner: Runner) -> Path:
    """``pip wheel`` of the kestrel-sovereign distribution (pure Python: one py3-none-any wheel)."""
    runner.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "-q",
            "-w",
            str(wheel_dir),
            str(src),
        ],
        what="build the Kestrel wheel",
        env={"SOURCE_DATE_EPOCH": str(epoch), "PIP_NO_INPUT": "1"},
    )
    if runner.dry_run:
        return wheel_dir / "kestrel_sovereign-VERSION-py3-none-any.whl"
    wheels = sorted(wheel_dir.glob("kestrel_sovereign-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one Kestrel wheel in {wheel_dir}, found {len(wheels)}")
    return wheels[0]


def _put(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _raspi_files(board: ImageBoard, root: Path) -> None:
    _put(
        root / "etc/default/raspi-firmware",
        f"# read by raspi-firmware's kernel hook: writes /boot/firmware/cmdline.txt\n"
        f'ROOTPART=LABEL={ROOT_LABEL}\nCONSOLES="{board.console} tty0"\nKERNEL_ARCH=arm64\n',
    )
    _put(
        root / "etc/default/raspi-firmware-custom",
        "# appended to /boot/firmware/config.txt by raspi-firmware\n"
        "dtparam=spi=on\ndtparam=i2c_arm=on\n"
        "# an SPI TPM HAT (Infineon SLB9670): uncomment, then first boot puts the key in the TPM\n"
        "#dtoverlay=tpm-slb9670\n" + board.config_txt,
    )


def build_overlay(
    repo: Path,
    out: Path,
    *,
    board: ImageBoard,
    runner: Runner,
    epoch: int,
    ref: str | None = None,
    extras: tuple[str, ...] = DEFAULT_EXTRAS,
) -> Path:
    """Build the overlay tree into ``out`` (replaced if present: the stage is idempotent)."""
    runner.say(f"stage rootfs-overlay: {board.name} -> {out}")
    if runner.dry_run:
        runner.run(
            ["pip", "wheel", "--no-deps", "-w", str(out / "opt/kestrel/wheels"), str(repo)],
            what="build the Kestrel wheel",
        )
        return out
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    root = tmp_out
    try:
        with tempfile.TemporaryDirectory(prefix="kestrel-src-") as src:
            version = source_tree(repo, Path(src), ref=ref)
            wheel = build_wheel(Path(src), root / "opt/kestrel/wheels", epoch=epoch, runner=runner)
            _add_files(Path(src), root, board=board, wheel=wheel, extras=extras)
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)  # the previous overlay, if any, stays as it was
        raise
    write_manifest(
        root,
        {
            "board": board.name,
            "source": version,
            "source_date_epoch": epoch,
            "wheel": wheel.name,
            "extras": list(extras),
        },
        epoch=epoch,
    )
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp_out, out)
    return out


def _add_files(src: Path, root: Path, *, board: ImageBoard, wheel: Path, extras: tuple[str, ...]) -> None:
    """Everything but the wheel, taken from the same source tree as the wheel."""
    image = src / "image"
    if not (image / "overlay").is_dir():
        raise BuildError(f"{image} has no overlay/ directory", hint="build from a commit that has image/")
    for item in sorted((image / "overlay").rglob("*")):
        if item.is_file():
            _put(root / item.relative_to(image / "overlay"), item.read_bytes())
    for unit in _UNITS:
        _put(root / "usr/lib/systemd/system" / unit, (image / "systemd" / unit).read_bytes())
    _link(
        root / "etc/systemd/system/multi-user.target.wants/kestrel-firstboot.service",
        "/usr/lib/systemd/system/kestrel-firstboot.service",
    )
    for name in _FIRSTBOOT:
        _put(root / "usr/lib/kestrel/firstboot" / name, (image / "firstboot" / name).read_bytes())
    _link(root / "usr/bin/kestrel", "/opt/kestrel/bin/kestrel")
    for doc in sorted((src / "docs").glob("*.md")):
        _put(root / "usr/share/doc/kestrel" / doc.name, doc.read_bytes())
    _put(
        root / "opt/kestrel/requirements.txt",
        f"# installed into /opt/kestrel by the rootfs stage (HNSWLIB_NO_NATIVE=1)\n"
        f"{wheel.name.split('-')[0].replace('_', '-')}[{','.join(extras)}] @ file:///opt/kestrel/wheels/{wheel.name}\n",
    )
    _put(root / "etc/hostname", "kestrel\n")
    profile = src / "board_profiles" / f"{board.name}.yaml"
    if profile.exists():
        _put(
            root / "etc/systemd/system/kestrel.service.d/30-memory.conf",
            memory_dropin(profile.read_text(), board=board.name),
        )
    if board.flash == "sd":  # L4T keeps its own partitions and fstab
        _put(
            root / "etc/fstab",
            _FSTAB.format(root=ROOT_LABEL, boot=BOOT_LABEL, data=DATA_LABEL, timeout=board.data_timeout),
        )
        _put(root / "etc/systemd/system/kestrel.service.d/15-data.conf", _DATA_DROPIN)
        if board.boot_files == "raspi":
            _raspi_files(board, root)
    if board.lab:
        _lab_files(image, root)
    _put(root / "boot/firmware/kestrel/README.txt", _BOOT_README)  # Jetson: a directory on the rootfs
    _put(root / "boot/firmware/kestrel/owner.json.example", json.dumps(_OWNER_EXAMPLE, indent=2) + "\n")
    (root / "var/lib/kestrel").mkdir(parents=True, mode=0o700)
    (root / "var/lib/kestrel").chmod(0o700)


def _lab_files(image: Path, root: Path) -> None:
    """The qemu-arm64 lab's extras: vTPM, gpio-sim chip and the test channel (never in product images)."""
    for unit in _LAB_UNITS:
        _put(root / "usr/lib/systemd/system" / unit, (image / "systemd" / unit).read_bytes())
        _link(root / f"etc/systemd/system/{_LAB_WANTS[unit]}.wants" / unit, f"/usr/lib/systemd/system/{unit}")
    for name in _LAB_FILES:
        _put(
            root / "usr/lib/kestrel/lab" / name,
            (image / "lab" / name).read_bytes(),
            0o755 if name == "gpio-sim-setup" else 0o644,
        )
    for unit in ("kestrel.service", "kestrel-firstboot.service"):
        _put(root / f"etc/systemd/system/{unit}.d/20-lab.conf", _LAB_DROPIN)
    _put(root / "etc/systemd/system/kestrel.service.d/25-lab-timing.conf", _LAB_DAEMON)


def write_manifest(root: Path, build: dict, *, epoch: int) -> dict:
    """List every entry's type, mode and SHA-256 in MANIFEST; set all mtimes to ``epoch``."""
    (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        st = path.lstat()
        if path.is_symlink():
            entries.append({"path": rel, "type": "link", "target": os.readlink(path)})
        elif path.is_dir():
            entries.append({"path": rel, "type": "dir", "mode": f"{st.st_mode & 0o7777:04o}"})
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append(
                {
                    "path": rel,
                    "type": "file",
                    "mode": f"{st.st_mode & 0o7777:04o}",
                    "size": st.st_size,
                    "sha256": digest,
                }
            )
    manifest = {"format": "kestrel-image-manifest/1", "build": build, "entries": entries}
    _put(root / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    return manifest

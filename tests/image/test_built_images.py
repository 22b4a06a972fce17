"""The layout of each SD-card image built on this machine, read from the host without mounts.

Runs on the images in the host cache (``$KESTREL_IMAGE_CACHE/out/BOARD/kestrel-BOARD.img``, default
/var/cache/kestrel-image) and skips, saying so, for a board not built here (``./dev image --board
BOARD`` builds one). Partition table by ``sfdisk --json``, the FAT file system by mtools at its
offset, the ext4 file systems by ``debugfs``/``dumpe2fs`` with ``?offset=`` (no loop devices).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kimage.boards import BOARDS
from kimage.disk import MIB, DiskLayout
from kimage.packages import PACKAGES_FILE, installed_packages, pending_updates, read_index, stanzas
from kimage.raspi import DTBS, SD_DRIVER
from kimage.raspi import SD_MODULE as SD_DRIVER_MODULE
from kimage.rootfs import UPDATE_HOLD, initramfs_names, initrd_kmods

CACHE = Path(os.environ.get("KESTREL_IMAGE_CACHE", "/var/cache/kestrel-image"))
SD_BOARDS = ("rpi4", "rpi-zero-2w", "rpi5", "qemu-arm64")
# The SD host controller module each board's root file system is behind (in the initrd).
SD_MODULE = {
    "rpi4": "sdhci-iproc.ko",
    "rpi-zero-2w": "bcm2835.ko",
    "rpi5": "sdhci-brcmstb.ko",  # out of tree (kimage/kmod.py)
    "qemu-arm64": "virtio_blk.ko",
}
ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "mdir", "mcopy", "debugfs", "dumpe2fs")),
    reason="needs fdisk, mtools and e2fsprogs (apt-get install fdisk mtools e2fsprogs)",
)


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=ENV, timeout=120).stdout


class Image:
    def __init__(self, board: str, path: Path) -> None:
        self.board, self.path = BOARDS[board], path
        self.layout = DiskLayout(self.board.boot_mib, self.board.root_mib, self.board.data_mib)
        self.table = __import__("json").loads(_run("sfdisk", "--json", str(path)))["partitiontable"]

    def fat_names(self, directory: str = "::/") -> set[str]:
        out = _run("mdir", "-b", "-i", f"{self.path}@@{self.layout.boot_offset}", directory)
        return {line.removeprefix(directory).rstrip("/") for line in out.splitlines() if line}

    def fat_file(self, name: str, dest: Path) -> Path:
        _run("mcopy", "-n", "-o", "-i", f"{self.path}@@{self.layout.boot_offset}", f"::{name}", str(dest))
        return dest

    def fat_text(self, name: str) -> str:
        return _run("mtype", "-i", f"{self.path}@@{self.layout.boot_offset}", f"::{name}")

    def ext4(self, offset: int) -> str:
        return f"{self.path}?offset={offset}"

    def debugfs(self, request: str, *, offset: int | None = None) -> str:
        return _run("debugfs", "-R", request, self.ext4(self.layout.root_offset if offset is None else offset))

    def exists(self, path: str) -> bool:
        return "Inode:" in self.debugfs(f"stat {path}")  # debugfs reports "not found" on stderr

    def names(self, directory: str) -> list[str]:
        out = self.debugfs(f"ls -p {directory}")
        return [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6]

    def dump(self, path: str, dest: Path) -> bytes:
        self.debugfs(f"dump {path} {dest}")
        return dest.read_bytes()

    def kernel_version(self) -> str:
        (kver,) = [n for n in self.names("/lib/modules") if n not in (".", "..")]
        return kver

    def label(self, offset: int) -> str:
        m = re.search(r"^Filesystem volume name:\s*(\S+)", _run("dumpe2fs", "-h", self.ext4(offset)), re.M)
        return m.group(1) if m else ""


@pytest.fixture(params=SD_BOARDS)
def image(request: pytest.FixtureRequest) -> Image:
    board = request.param
    path = CACHE / "out" / board / f"kestrel-{board}.img"
    if not path.exists():
        pytest.skip(f"no {board} image built on this machine ({path}); build one with ./dev image --board {board}")
    return Image(board, path)


def test_partition_table_matches_the_layout(image: Image) -> None:
    parts = image.table["partitions"]
    lay = image.layout
    assert [(p["start"] * 512, p["size"] * 512) for p in parts] == [
        (lay.boot_offset, lay.boot_mib * MIB),
        (lay.root_offset, lay.root_mib * MIB),
        (lay.data_offset, lay.data_mib * MIB),
    ]
    assert [p["type"] for p in parts] == ["c", "83", "83"] and parts[0].get("bootable")
    assert image.path.stat().st_size == lay.total_bytes
    sha = (image.path.parent / f"{image.path.name}.sha256").read_text().split()
    assert sha[1] == image.path.name and re.fullmatch(r"[0-9a-f]{64}", sha[0])


def test_file_systems_carry_their_labels(image: Image) -> None:
    assert image.label(image.layout.root_offset) == "KESTREL_ROOT"
    assert image.label(image.layout.data_offset) == "KESTREL_DATA"
    out = _run("minfo", "-i", f"{image.path}@@{image.layout.boot_offset}", "::")
    assert "KESTRELBOOT" in out


def test_boot_partition_has_firmware_kernel_initrd_and_device_trees(image: Image, tmp_path: Path) -> None:
    names = image.fat_names()
    assert "kestrel" in names and {"README.txt", "owner.json.example"} <= image.fat_names("::/kestrel/")
    cmdline = image.fat_text("cmdline.txt")
    assert "root=LABEL=KESTREL_ROOT" in cmdline.split() and "rootwait" in cmdline.split()
    if image.board.boot_files == "direct":
        assert {"vmlinuz", "initrd.img", "cmdline.txt"} <= names
        initrd = image.fat_file("initrd.img", tmp_path / "initrd.img")
    else:
        config = image.fat_text("config.txt").splitlines()
        kernel = next(line.removeprefix("kernel=") for line in config if line.startswith("kernel="))
        initrd_name = next(line.split()[1] for line in config if line.startswith("initramfs "))
        assert {kernel, initrd_name, "config.txt", "cmdline.txt", *DTBS[image.board.name]} <= names
        assert "arm_64bit=1" in config and "upstream_kernel=1" in config and "dtparam=spi=on" in config
        assert f"console={image.board.console}" in cmdline.split()
        if image.board.name != "rpi5":  # the Pi 5 boots from its EEPROM; the older Pis need the GPU firmware
            assert {"bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat"} <= names
        for line in config:  # every file config.txt names is on the partition
            if line.startswith("device_tree="):
                assert line.removeprefix("device_tree=") in names
        initrd = image.fat_file(initrd_name, tmp_path / "initrd.img")
    modules = {re.sub(r"\.(xz|zst|gz)$", "", n.rsplit("/", 1)[-1]) for n in initramfs_names(initrd)}
    assert "ext4.ko" in modules
    if image.board.name in SD_MODULE:
        assert SD_MODULE[image.board.name] in modules
    assert len([m for m in modules if m.endswith(".ko") or ".ko." in m]) < 150  # a list, not MODULES=most


def test_image_carries_no_identity_and_no_machine_id(image: Image) -> None:
    stat = image.debugfs("stat /etc/machine-id")
    assert re.search(r"Size: 0\b", stat), stat
    assert image.exists("/etc/machine-id") and not image.exists("/var/lib/dbus/machine-id")
    for directory, offset in (("/var/lib/kestrel", None), ("/", image.layout.data_offset)):
        entries = {
            line.split("/")[5] for line in image.debugfs(f"ls -p {directory}", offset=offset).splitlines() if line
        }
        assert entries <= {".", "..", "lost+found"}, (directory, entries)
    assert not image.exists("/var/lib/systemd/random-seed") and image.exists("/etc/passwd")
    fstab = image.debugfs("cat /etc/fstab")
    assert "LABEL=KESTREL_DATA" in fstab and "/var/lib/kestrel" in fstab


def test_data_partition_root_belongs_to_the_daemons_user(image: Image) -> None:
    passwd = image.debugfs("cat /etc/passwd")
    uid = next(line.split(":")[2] for line in passwd.splitlines() if line.startswith("kestrel:"))
    root = image.debugfs("stat /", offset=image.layout.data_offset)
    assert re.search(rf"User:\s+{uid}\b", root), root


def test_kernel_drives_the_boards_sd_card(image: Image) -> None:
    """The root file system is on the SD card: the image's kernel must have its controller's driver."""
    if image.board.name not in SD_DRIVER:
        pytest.skip(f"{image.board.name} boots from a virtio disk")
    kernels = [n for n in image.fat_names() if n.startswith("vmlinuz-")]
    kver = kernels[0].removeprefix("vmlinuz-")
    config = image.debugfs(f"cat /boot/config-{kver}")
    assert "CONFIG_MMC=y" in config.splitlines()  # the file was read
    option = SD_DRIVER[image.board.name]
    if not re.search(rf"^{option}=[ym]$", config, re.M):  # the Pi 5: Debian's kernels lack sdhci-brcmstb
        module = f"{SD_DRIVER_MODULE[image.board.name]}.ko"
        assert module in image.names(f"/lib/modules/{kver}/extra"), f"{option} is not set and no out-of-tree {module}"


def _vermagic(module: bytes) -> str:
    if module.startswith(b"\xfd7zXZ"):
        module = lzma.decompress(module)
    m = re.search(rb"(?:^|\0)vermagic=([^\0]*)\0", module)
    assert m, "no vermagic in the module's .modinfo"
    return m.group(1).decode()


def test_out_of_tree_modules_match_the_kernel_and_are_in_the_initrd(image: Image, tmp_path: Path) -> None:
    """Each out-of-tree module (kimage/kmod.py) is in lib/modules/KVER/extra with the vermagic of the
    kernel's own modules, is indexed by depmod, and those the root file system needs are in the initrd.
    (The Pi 5's are checked at build and link level only: QEMU 7.2 has no Pi 5 to boot them on.)"""
    if not image.board.kmods:
        pytest.skip(f"{image.board.name} has no out-of-tree modules")
    kver = image.kernel_version()
    mods = f"/lib/modules/{kver}"
    (ext4,) = [n for n in image.names(f"{mods}/kernel/fs/ext4") if n.startswith("ext4.ko")]
    kernel_magic = _vermagic(image.dump(f"{mods}/kernel/fs/ext4/{ext4}", tmp_path / ext4))
    assert kernel_magic.split()[0] == kver
    dep = image.debugfs(f"cat {mods}/modules.dep")
    for name in image.board.kmods:
        magic = _vermagic(image.dump(f"{mods}/extra/{name}.ko", tmp_path / f"{name}.ko"))
        assert magic == kernel_magic, (name, magic, kernel_magic)
        assert re.search(rf"^extra/{name}\.ko:", dep, re.M), f"depmod did not index {name}"
    wanted = initrd_kmods(image.board)
    if wanted:
        if image.board.boot_files == "direct":
            initrd = image.fat_file("initrd.img", tmp_path / "initrd.img")
        else:
            initrd = image.fat_file(f"initrd.img-{kver}", tmp_path / "initrd.img")
        names = {n.removeprefix("./").removeprefix("usr/") for n in initramfs_names(initrd)}  # merged /usr or not
        for name in wanted:
            assert f"lib/modules/{kver}/extra/{name}.ko" in names, f"the initrd lacks {name}"


def test_no_installed_package_is_older_than_the_cached_security_and_updates_index(image: Image, tmp_path: Path) -> None:
    """Every installed package has at least the version of bookworm-security and -updates in the
    recipe's cached index (the one the image was built from; the kernel, UPDATE_HOLD, excepted:
    its modules are built per kernel version), and the image's manifest lists those versions with
    the SHA-256 of each .deb."""
    lists = CACHE / "apt-bookworm-updates" / "lists"
    if not any(lists.glob("*_dists_bookworm-security_*_Packages*")):
        pytest.skip(f"no cached bookworm-security index in {lists}; an image build without --cached-only makes it")
    if not Path("/usr/lib/apt/apt-helper").exists():
        pytest.skip("needs apt's apt-helper to read the compressed index (apt-get install apt)")
    index = read_index(lists, ("bookworm-security", "bookworm-updates"))
    status = image.dump("/var/lib/dpkg/status", tmp_path / "status").decode()
    assert len(stanzas(index)) > 100 and "Package: libc6\n" in status  # both read, not empty
    stale = pending_updates(status, index, hold=UPDATE_HOLD)
    assert not stale, [f"{u.package} {u.installed} < {u.candidate}" for u in stale]
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(status)
    manifest = __import__("json").loads(image.dump(f"/{PACKAGES_FILE}", tmp_path / "packages.json"))
    listed = {(p["package"], p["version"]): p["sha256"] for p in manifest["debian"]}
    installed = {(p["package"], p["version"]) for p in installed_packages(tmp_path)}
    assert set(listed) == installed
    newer = {(f["Package"], f["Version"]) for f in stanzas(index)} & installed
    assert all(listed[p] for p in newer), [p for p in newer if not listed[p]]

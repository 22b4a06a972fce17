"""Stage ``image``: a partitioned SD-card image (MBR: boot FAT32 + root ext4), genimage-style.

Each file system is made in its own file (``mkfs.vfat -C`` + ``mcopy``, ``mkfs.ext4 -d``), then
written at its offset into the image after ``sfdisk`` wrote the table: no loop devices, no mounts.
UUIDs, volume ids and timestamps derive from a seed and SOURCE_DATE_EPOCH, so the same inputs
give the same bytes. The partition layout is pure and tested (``DiskLayout``).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from .overlay import BOOT_LABEL, ROOT_LABEL
from .steps import BuildError, Runner

__all__ = ["DiskLayout", "assemble_image", "ids_for"]

MIB = 1 << 20


@dataclass(frozen=True)
class DiskLayout:
    """MBR layout: 4 MiB gap (alignment), boot FAT32 (type 0x0c, bootable), root ext4 (0x83)."""

    boot_mib: int
    root_mib: int
    first_mib: int = 4

    def __post_init__(self) -> None:
        if self.boot_mib < 64 or self.root_mib < 16:
            raise BuildError(f"partitions too small (boot {self.boot_mib} MiB, root {self.root_mib} MiB)",
                             hint="FAT32 boot needs at least 64 MiB, root at least 16 MiB", exit_code=64)

    @property
    def boot_offset(self) -> int:
        return self.first_mib * MIB

    @property
    def root_offset(self) -> int:
        return (self.first_mib + self.boot_mib) * MIB

    @property
    def total_bytes(self) -> int:
        return (self.first_mib + self.boot_mib + self.root_mib) * MIB

    def sfdisk_script(self, *, disk_id: str) -> str:
        sectors = MIB // 512
        return (f"label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n\n"
                f"start={self.first_mib * sectors}, size={self.boot_mib * sectors}, type=c, bootable\n"
                f"start={(self.first_mib + self.boot_mib) * sectors}, size={self.root_mib * sectors}, type=83\n")


def ids_for(seed: str) -> tuple[str, str, str]:
    """(MBR disk id, FAT volume id, ext4 UUID) derived from ``seed`` (reproducible builds)."""
    h = hashlib.sha256(seed.encode()).digest()
    return h[:4].hex(), h[4:8].hex(), str(uuid.UUID(bytes=h[8:24], version=4))


def assemble_image(boot_dir: Path, root_dir: Path, img: Path, *, layout: DiskLayout, runner: Runner,
                   epoch: int, seed: str) -> Path:
    """Write ``img`` (replaced atomically) from the two trees; returns it. Idempotent."""
    runner.need_tools("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4")
    if not runner.dry_run:
        for tree in (boot_dir, root_dir):
            if not tree.is_dir():
                raise BuildError(f"{tree} does not exist", hint="run the rootfs stage first")
    disk_id, vol_id, root_uuid = ids_for(seed)
    work = img.with_name(img.name + ".parts")
    boot_fs, root_fs, tmp_img = work / "boot.vfat", work / "root.ext4", img.with_name(img.name + ".tmp")
    if not runner.dry_run:
        work.mkdir(parents=True, exist_ok=True)
        for stale in (boot_fs, root_fs, tmp_img):
            stale.unlink(missing_ok=True)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch), "MTOOLS_SKIP_CHECK": "1",
           "TZ": "UTC"}
    runner.run(["mkfs.vfat", "-C", "-F", "32", "-n", BOOT_LABEL, "-i", vol_id, str(boot_fs),
                str(layout.boot_mib * 1024)], what="make the boot FAT file system", env=env)
    entries = sorted(boot_dir.iterdir()) if boot_dir.is_dir() else []
    if entries:
        runner.run(["mcopy", "-s", "-p", "-m", "-Q", "-i", str(boot_fs), *map(str, entries), "::/"],
                   what="copy the boot files", env=env)
    runner.run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", ROOT_LABEL, "-U", root_uuid,
                "-E", f"hash_seed={root_uuid},root_owner=0:0", "-d", str(root_dir), str(root_fs),
                f"{layout.root_mib}M"], what="make the root ext4 file system from the rootfs tree", env=env)
    if not runner.dry_run:
        with open(tmp_img, "wb") as fh:
            fh.truncate(layout.total_bytes)
    runner.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp_img)],
               stdin=layout.sfdisk_script(disk_id=disk_id).encode(), what="write the partition table")
    for part, offset in ((boot_fs, layout.boot_offset), (root_fs, layout.root_offset)):
        runner.run(["dd", f"if={part}", f"of={tmp_img}", "bs=1M", f"seek={offset // MIB}", "conv=notrunc,sparse",
                    "status=none"], what=f"write {part.name} into the image")
    if runner.dry_run:
        return img
    os.replace(tmp_img, img)
    for part in (boot_fs, root_fs):
        part.unlink()
    work.rmdir()
    digest = hashlib.sha256()
    with open(img, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MIB), b""):
            digest.update(block)
    (img.with_name(img.name + ".sha256")).write_text(f"{digest.hexdigest()}  {img.name}\n")
    return img

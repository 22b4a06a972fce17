"""Stage ``image``: a partitioned SD-card image (MBR: boot FAT32 + root ext4 + data ext4), genimage-style.

Each file system is made in its own file (``mkfs.vfat -C`` + ``mcopy``, ``mkfs.ext4 -d``), then
written at its offset into the image after ``sfdisk`` wrote the table: no loop devices, no mounts.
UUIDs, volume ids and timestamps derive from a seed and SOURCE_DATE_EPOCH, so the same inputs
give the same bytes. The partition layout is pure and tested (``DiskLayout``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from .overlay import BOOT_LABEL, DATA_LABEL, ROOT_LABEL
from .steps import BuildError, Runner

__all__ = ["DiskLayout", "assemble_image", "ids_for", "make_data_fs", "owner_ids"]

MIB = 1 << 20


@dataclass(frozen=True)
class DiskLayout:
    """MBR layout: 4 MiB gap (alignment), boot FAT32 (type 0x0c, bootable), root ext4 (0x83) and,
    with ``data_mib``, the data ext4 (0x83) that holds the state directory."""

    boot_mib: int
    root_mib: int
    data_mib: int = 0
    first_mib: int = 4

    def __post_init__(self) -> None:
        if self.boot_mib < 64 or self.root_mib < 16 or 0 < self.data_mib < 16:
            raise BuildError(
                f"partitions too small (boot {self.boot_mib} MiB, root {self.root_mib} MiB)",
                hint="FAT32 boot needs at least 64 MiB, root at least 16 MiB",
                exit_code=64,
            )

    @property
    def boot_offset(self) -> int:
        return self.first_mib * MIB

    @property
    def root_offset(self) -> int:
        return (self.first_mib + self.boot_mib) * MIB

    @property
    def data_offset(self) -> int:
        return (self.first_mib + self.boot_mib + self.root_mib) * MIB

    @property
    def total_bytes(self) -> int:
        return (self.first_mib + self.boot_mib + self.root_mib + self.data_mib) * MIB

    def sfdisk_script(self, *, disk_id: str) -> str:
        sectors = MIB // 512
        return (
            f"label: dos\nlabel-id: 0x{disk_id}\nunit: sectors\n\n"
            f"start={self.first_mib * sectors}, size={self.boot_mib * sectors}, type=c, bootable\n"
            f"start={(self.first_mib + self.boot_mib) * sectors}, size={self.root_mib * sectors}, type=83\n"
            + (f"start={self.data_offset // 512}, size={self.data_mib * sectors}, type=83\n" if self.data_mib else "")
        )


def ids_for(seed: str) -> tuple[str, str, str]:
    """(MBR disk id, FAT volume id, ext4 UUID) derived from ``seed`` (reproducible builds)."""
    h = hashlib.sha256(seed.encode()).digest()
    return h[:4].hex(), h[4:8].hex(), str(uuid.UUID(bytes=h[8:24], version=4))


def owner_ids(root_dir: Path, user: str = "kestrel") -> tuple[int, int]:
    """uid and gid of ``user`` in the rootfs's /etc/passwd (root if it has none)."""
    try:
        for line in (root_dir / "etc/passwd").read_text().splitlines():
            f = line.split(":")
            if f[0] == user:
                return int(f[2]), int(f[3])
    except OSError:
        pass
    return 0, 0


def make_data_fs(
    path: Path,
    *,
    size_mib: int,
    owner: tuple[int, int],
    uuid_: str,
    runner: Runner,
    env: dict[str, str],
    fill_from: Path | None = None,
) -> None:
    """The data partition's ext4 (label KESTREL_DATA): empty, its root owned by the daemon's user.
    ``fill_from`` (tests) puts a tree in it, e.g. a file that fills it."""
    runner.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            DATA_LABEL,
            "-U",
            uuid_,
            "-m",
            "0",
            "-E",
            f"hash_seed={uuid_},root_owner={owner[0]}:{owner[1]}",
            *(["-d", str(fill_from)] if fill_from else []),
            str(path),
            f"{size_mib}M",
        ],
        what="make the data ext4 file system",
        env=env,
    )


def used_inodes(dumpe2fs_output: str) -> list[int]:
    """The inode numbers in use, from ``dumpe2fs`` (each group's range less its "Free inodes")."""
    head = re.search(r"^Inodes per group:\s+(\d+)", dumpe2fs_output, re.M)
    if head is None:
        raise BuildError("dumpe2fs printed no 'Inodes per group'", hint="check e2fsprogs (apt-get install e2fsprogs)")
    per_group = int(head.group(1))
    used: list[int] = []
    for m in re.finditer(r"^Group (\d+):.*?^\s+Free inodes: ?([0-9, -]*)$", dumpe2fs_output, re.M | re.S):
        first = int(m.group(1)) * per_group + 1
        free: set[int] = set()
        for part in filter(None, (x.strip() for x in m.group(2).split(","))):
            lo, _, hi = part.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
        used += [i for i in range(first, first + per_group) if i not in free]
    return used


def pin_inode_times(fs: Path, *, epoch: int, script: Path) -> int:
    """Set the access and change times of every inode of the ext4 ``fs`` to ``epoch``.

    ``mkfs.ext4 -d`` (e2fsprogs 1.47.0) copies each file's atime and ctime from the host, where the
    ctime is when the build wrote it and cannot be set; only the mtime is the source's. debugfs
    rewrites them (inode checksums included). Returns how many inodes."""
    out = subprocess.run(["dumpe2fs", str(fs)], capture_output=True, text=True, check=True).stdout
    inodes = used_inodes(out)
    script.write_text("".join(f"sif <{i}> {f} @{epoch}\n" for i in inodes for f in ("atime", "ctime")))
    proc = subprocess.run(  # the fake time: debugfs stamps the superblock's last write time
        ["debugfs", "-w", "-f", str(script), str(fs)],
        capture_output=True,
        text=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)},
    )
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("debugfs ")]
    if proc.returncode != 0 or errors:
        raise BuildError(f"cannot set the root file system's inode times: {' '.join(errors[-3:])}")
    script.unlink()
    return len(inodes)


def assemble_image(
    boot_dir: Path, root_dir: Path, img: Path, *, layout: DiskLayout, runner: Runner, epoch: int, seed: str
) -> Path:
    """Write ``img`` (replaced atomically) from the two trees; returns it. Idempotent."""
    runner.need_tools("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "dumpe2fs")
    if not runner.dry_run:
        for tree in (boot_dir, root_dir):
            if not tree.is_dir():
                raise BuildError(f"{tree} does not exist", hint="run the rootfs stage first")
    disk_id, vol_id, root_uuid = ids_for(seed)
    work = img.with_name(img.name + ".parts")
    boot_fs, root_fs, tmp_img = work / "boot.vfat", work / "root.ext4", img.with_name(img.name + ".tmp")
    data_fs = work / "data.ext4"
    if not runner.dry_run:
        work.mkdir(parents=True, exist_ok=True)
        for stale in (boot_fs, root_fs, data_fs, tmp_img):
            stale.unlink(missing_ok=True)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "E2FSPROGS_FAKE_TIME": str(epoch), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    runner.run(
        [
            "mkfs.vfat",
            "--invariant",  # the volume label's directory entry gets a fixed date, not the build's
            "-C",
            "-F",
            "32",
            "-n",
            BOOT_LABEL,
            "-i",
            vol_id,
            str(boot_fs),
            str(layout.boot_mib * 1024),
        ],
        what="make the boot FAT file system",
        env=env,
    )
    entries = sorted(boot_dir.iterdir()) if boot_dir.is_dir() else []
    if entries:
        runner.run(
            ["mcopy", "-s", "-p", "-m", "-Q", "-i", str(boot_fs), *map(str, entries), "::/"],
            what="copy the boot files",
            env=env,
        )
    runner.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            ROOT_LABEL,
            "-U",
            root_uuid,
            "-E",
            f"hash_seed={root_uuid},root_owner=0:0",
            "-d",
            str(root_dir),
            str(root_fs),
            f"{layout.root_mib}M",
        ],
        what="make the root ext4 file system from the rootfs tree",
        env=env,
    )
    if not runner.dry_run:
        pin_inode_times(root_fs, epoch=epoch, script=work / "times.debugfs")
    parts = [(boot_fs, layout.boot_offset), (root_fs, layout.root_offset)]
    if layout.data_mib:
        data_uuid = str(uuid.UUID(bytes=hashlib.sha256(f"{seed}-data".encode()).digest()[:16], version=4))
        make_data_fs(
            data_fs, size_mib=layout.data_mib, owner=owner_ids(root_dir), uuid_=data_uuid, runner=runner, env=env
        )
        parts.append((data_fs, layout.data_offset))
    if not runner.dry_run:
        with open(tmp_img, "wb") as fh:
            fh.truncate(layout.total_bytes)
    runner.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp_img)],
        stdin=layout.sfdisk_script(disk_id=disk_id).encode(),
        what="write the partition table",
    )
    for part, offset in parts:
        runner.run(
            [
                "dd",
                f"if={part}",
                f"of={tmp_img}",
                "bs=1M",
                f"seek={offset // MIB}",
                "conv=notrunc,sparse",
                "status=none",
            ],
            what=f"write {part.name} into the image",
        )
    if runner.dry_run:
        return img
    os.replace(tmp_img, img)
    for part, _ in parts:
        part.unlink()
    work.rmdir()
    digest = hashlib.sha256()
    with open(img, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MIB), b""):
            digest.update(block)
    (img.with_name(img.name + ".sha256")).write_text(f"{digest.hexdigest()}  {img.name}\n")
    return img

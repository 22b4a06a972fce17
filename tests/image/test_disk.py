"""The image stage's disk assembly: a real partitioned image from small trees (no loop devices)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kimage.compare import compare
from kimage.disk import MIB, DiskLayout, assemble_image, ids_for, used_inodes
from kimage.rootfs import clamp_mtimes
from kimage.steps import BuildError, Runner

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "mtype")


def test_layout_is_aligned_and_scripted() -> None:
    layout = DiskLayout(boot_mib=256, root_mib=2048)
    assert layout.boot_offset == 4 * MIB and layout.root_offset == 260 * MIB
    assert layout.total_bytes == (4 + 256 + 2048) * MIB
    script = layout.sfdisk_script(disk_id="4b455354")
    assert "label: dos" in script and "label-id: 0x4b455354" in script
    assert "start=8192, size=524288, type=c, bootable" in script
    assert "start=532480, size=4194304, type=83" in script


def test_layout_refuses_tiny_partitions() -> None:
    with pytest.raises(BuildError, match="too small"):
        DiskLayout(boot_mib=8, root_mib=2048)


def test_ids_are_derived_from_the_seed() -> None:
    assert ids_for("a") == ids_for("a") and ids_for("a") != ids_for("b")
    disk_id, vol_id, root_uuid = ids_for("kestrel-rpi4-1")
    assert len(disk_id) == 8 and len(vol_id) == 8 and len(root_uuid) == 36


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (apt-get install fdisk dosfstools mtools e2fsprogs)")
    boot, root = tmp_path / "boot", tmp_path / "root"
    (boot / "kestrel").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "kestrel" / "README.txt").write_text("put owner.json here\n")
    (root / "etc/kestrel").mkdir(parents=True)
    (root / "etc/kestrel/device.yaml").write_text("version: 1\nname: kestrel\n")
    (root / "var/lib/kestrel").mkdir(parents=True, mode=0o700)
    (root / "var/lib/kestrel").chmod(0o700)
    (root / "boot/firmware").mkdir(parents=True)
    return boot, root


def _partition(img: Path, offset: int, size: int, out: Path) -> Path:
    with open(img, "rb") as src, open(out, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    return out


def test_image_has_both_partitions_with_their_files(trees: tuple[Path, Path], tmp_path: Path) -> None:
    boot, root = trees
    layout = DiskLayout(boot_mib=64, root_mib=32)
    img = assemble_image(boot, root, tmp_path / "k.img", layout=layout, runner=Runner(), epoch=1700000000, seed="test")
    assert img.stat().st_size == layout.total_bytes
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    assert table["label"] == "dos" and table["id"] == "0x" + ids_for("test")[0]
    p1, p2 = table["partitions"]
    assert (p1["start"], p1["size"], p1["type"], p1.get("bootable")) == (8192, 64 * 2048, "c", True)
    assert (p2["start"], p2["size"], p2["type"]) == (8192 + 64 * 2048, 32 * 2048, "83")

    cfg = subprocess.run(
        ["mtype", "-i", f"{img}@@{layout.boot_offset}", "::config.txt"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert cfg.replace("\r", "") == "arm_64bit=1\n"
    ext4 = _partition(img, layout.root_offset, layout.root_mib * MIB, tmp_path / "root.ext4")
    cat = subprocess.run(
        ["debugfs", "-R", "cat /etc/kestrel/device.yaml", str(ext4)], capture_output=True, text=True, check=True
    ).stdout
    assert cat == "version: 1\nname: kestrel\n"
    st = subprocess.run(
        ["debugfs", "-R", "stat /var/lib/kestrel", str(ext4)], capture_output=True, text=True, check=True
    ).stdout
    assert "Mode:  0700" in st
    label = subprocess.run(["debugfs", "-R", "stats", str(ext4)], capture_output=True, text=True).stdout
    assert "KESTREL_ROOT" in label
    digest = hashlib.sha256(img.read_bytes()).hexdigest()
    assert (tmp_path / "k.img.sha256").read_text().split()[0] == digest
    assert not (tmp_path / "k.img.parts").exists() and not (tmp_path / "k.img.tmp").exists()


def test_rebuild_replaces_the_image_with_the_same_layout_and_ids(trees: tuple[Path, Path], tmp_path: Path) -> None:
    """Idempotent: a second run replaces the image; table, disk id and file system UUID are derived
    from the seed, so they do not change (file times inside the file systems may)."""
    boot, root = trees
    layout = DiskLayout(boot_mib=64, root_mib=32)
    facts = []
    for _ in range(2):
        img = assemble_image(boot, root, tmp_path / "k.img", layout=layout, runner=Runner(), epoch=1700000000, seed="s")
        table = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True).stdout
        ext4 = _partition(img, layout.root_offset, layout.root_mib * MIB, tmp_path / "root.ext4")
        stats = subprocess.run(["debugfs", "-R", "stats", str(ext4)], capture_output=True, text=True).stdout
        uuid_line = next(ln for ln in stats.splitlines() if ln.startswith("Filesystem UUID"))
        facts.append((table, uuid_line))
    assert facts[0] == facts[1]
    assert ids_for("s")[2] in facts[0][1]


def test_root_tree_larger_than_partition_fails_clearly(trees: tuple[Path, Path], tmp_path: Path) -> None:
    boot, root = trees
    (root / "big").write_bytes(os.urandom(40 * MIB))  # incompressible, no holes
    with pytest.raises(BuildError, match="root ext4"):
        assemble_image(
            boot,
            root,
            tmp_path / "k.img",
            layout=DiskLayout(boot_mib=64, root_mib=32),
            runner=Runner(),
            epoch=1700000000,
            seed="s",
        )
    assert not (tmp_path / "k.img").exists()


def test_same_trees_copied_later_give_the_same_image_bytes(trees: tuple[Path, Path], tmp_path: Path) -> None:
    """Reproducible: the trees copied again (new ctimes and atimes on the host, a second apart)
    give a byte-identical image; only the mtimes of the trees (clamped by the recipe) go in."""
    boot, root = trees
    layout = DiskLayout(boot_mib=64, root_mib=32, data_mib=16)
    clamp_mtimes(boot, 1700000000), clamp_mtimes(root, 1700000000)
    digests = []
    for n in range(2):
        b2, r2 = tmp_path / f"boot{n}", tmp_path / f"root{n}"
        subprocess.run(["cp", "-a", str(boot), str(b2)], check=True)
        subprocess.run(["cp", "-a", str(root), str(r2)], check=True)
        for tree in (b2, r2):  # a different access time on each copy's files
            for f in tree.rglob("*"):
                os.utime(f, (1700000000 - 1000 * (n + 1), f.lstat().st_mtime), follow_symlinks=False)
        img = assemble_image(b2, r2, tmp_path / f"k{n}.img", layout=layout, runner=Runner(), epoch=1700000000, seed="r")
        digests.append(hashlib.sha256(img.read_bytes()).hexdigest())
        time.sleep(1.1)  # a later second for every time the tools might take from the clock
    assert digests[0] == digests[1]


def test_clamp_mtimes_moves_only_later_times(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    old, new = tmp_path / "d/old", tmp_path / "d/new"
    old.write_text("o"), new.write_text("n")
    os.utime(old, (1000, 1000))
    (tmp_path / "d/link").symlink_to("missing")  # not followed
    assert clamp_mtimes(tmp_path, 5000) == 3  # d, new, link
    assert old.stat().st_mtime == 1000 and new.stat().st_mtime == 5000
    assert (tmp_path / "d/link").lstat().st_mtime == 5000


def test_used_inodes_from_dumpe2fs() -> None:
    out = (
        "Inodes per group:         8\n"
        "Group 0: (Blocks 0-7)\n  Free inodes: 5-8\n"
        "Group 1: (Blocks 8-15) [INODE_UNINIT]\n  Free inodes: 9-16\n"
        "Group 2: (Blocks 16-23)\n  Free inodes: 18, 20-24\n"
    )
    assert used_inodes(out) == [1, 2, 3, 4, 17, 19]
    with pytest.raises(BuildError, match="Inodes per group"):
        used_inodes("garbage")


def test_compare_names_the_file_that_differs(trees: tuple[Path, Path], tmp_path: Path) -> None:
    boot, root = trees
    layout = DiskLayout(boot_mib=64, root_mib=32, data_mib=16)
    a = assemble_image(boot, root, tmp_path / "a.img", layout=layout, runner=Runner(), epoch=1700000000, seed="c")
    assert compare(a, a, tmp_path) == []
    (root / "etc/kestrel/device.yaml").write_text("version: 1\nname: other\n")
    b = assemble_image(boot, root, tmp_path / "b.img", layout=layout, runner=Runner(), epoch=1700000000, seed="c")
    found = compare(a, b, tmp_path / "work")
    assert found[0] == "the images differ" and "partition 1: identical" in found and "partition 3: identical" in found
    (line,) = [f for f in found if f.startswith("  differs:")]
    assert line.startswith("  differs: etc/kestrel/device.yaml (") and "content" in line, found
    # ext4, inode by inode: the file's inode (its size) and its data block, by path
    (inode,) = [f for f in found if f.startswith("  inode ")]
    assert "/etc/kestrel/device.yaml: " in inode and "Size" in inode and inode.endswith("content"), found
    assert not any("only in" in line for line in found)

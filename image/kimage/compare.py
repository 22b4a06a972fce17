"""Compare two SD-card images: whole file, each partition, then each file of the partitions that
differ (reproducibility checks, docs/image.md). No mounts: mtools and ``debugfs rdump`` copy the
file systems out at their offsets.

    PYTHONPATH=image python3 -m kimage.compare A.img B.img [--work DIR]

Prints one line per finding and exits 0 when the images are byte-identical, 1 when they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Entry", "diff_trees", "partition_digests", "tree_entries", "main"]

_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
Entry = tuple[str, str, int, int, int, int | str]  # kind, mode, uid, gid, mtime, sha256 / link target / 0


def _digest(path: Path, offset: int = 0, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = size
        while left is None or left > 0:
            block = fh.read(4 << 20 if left is None else min(4 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def partitions(img: Path) -> list[tuple[int, int, str]]:
    """(offset, size, type) of each partition (``sfdisk --json``)."""
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True, check=True, env=_ENV).stdout
    )["partitiontable"]
    return [(p["start"] * 512, p["size"] * 512, p["type"]) for p in table["partitions"]]


def partition_digests(img: Path) -> list[str]:
    return [_digest(img, off, size) for off, size, _ in partitions(img)]


def tree_entries(top: Path) -> Iterator[tuple[str, Entry]]:
    """(relative path, metadata and content digest) for everything below ``top``, sorted."""
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted([*dirs, *files]):
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: int | str = os.readlink(path)
                kind = "link"
            elif stat.S_ISREG(st.st_mode):
                what, kind = _digest(path), "file"
            else:
                what, kind = 0, "dir" if stat.S_ISDIR(st.st_mode) else "other"
            rel = str(path.relative_to(top))
            yield rel, (kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, int(st.st_mtime), what)


def diff_trees(a: Path, b: Path) -> list[str]:
    """What differs between two trees: ``only in A/B``, or which of a path's properties differ."""
    ea, eb = dict(tree_entries(a)), dict(tree_entries(b))
    fields = ("type", "mode", "uid", "gid", "mtime", "content")
    out = [f"only in A: {p}" for p in sorted(ea.keys() - eb.keys())]
    out += [f"only in B: {p}" for p in sorted(eb.keys() - ea.keys())]
    for p in sorted(ea.keys() & eb.keys()):
        # Only regular files' mtimes survive the copy out (mcopy/rdump set links' and directories'
        # as they write them); ext4 metadata is compared inode by inode (``ext4_diff``).
        changed = [
            f
            for f, x, y in zip(fields, ea[p], eb[p], strict=True)
            if x != y and (f != "mtime" or ea[p][0] == eb[p][0] == "file")
        ]
        if changed:
            out.append(f"differs: {p} ({', '.join(changed)})")
    return out


def differing_blocks(a: Path, b: Path, offset: int, size: int, block: int = 4096) -> list[int]:
    """Numbers of the ``block``-sized blocks that differ between two equal-sized regions."""
    out = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset), fb.seek(offset)
        for n in range(size // block):
            if fa.read(block) != fb.read(block):
                out.append(n)
    return out


def _debugfs(img: Path, offset: int, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, f"{img}?offset={offset}"], capture_output=True, text=True, env=_ENV, check=True
    ).stdout


def ext4_diff(a: Path, b: Path, offset: int, size: int) -> list[str]:
    """Which inodes (by path) and which of their fields differ, from the blocks that differ: inode
    table blocks name their inodes, data blocks their owners (``icheck``), the rest is metadata."""
    head = subprocess.run(["dumpe2fs", f"{a}?offset={offset}"], capture_output=True, text=True, env=_ENV).stdout
    keys = ("Block size", "Inodes per group", "Inode size")
    numbers = [re.search(rf"^{k}:\s+(\d+)", head, re.M) for k in keys]
    if not all(numbers):
        return ["dumpe2fs could not read the file system"]
    bs, per_group, inode_size = (int(m.group(1)) for m in numbers if m)
    blocks = differing_blocks(a, b, offset, size, bs)
    tables = [tuple(map(int, m.groups())) for m in re.finditer(r"Inode table at (\d+)-(\d+)", head)]
    inodes: set[int] = set()
    other: list[int] = []
    for blk in blocks:
        for group, (lo, hi) in enumerate(tables):
            if lo <= blk <= hi:
                first = group * per_group + (blk - lo) * bs // inode_size + 1
                inodes.update(range(first, first + bs // inode_size))
                break
        else:
            other.append(blk)
    data_owners: set[int] = set()
    meta: list[int] = []
    if other:
        for line in _debugfs(a, offset, "icheck " + " ".join(map(str, other[:500]))).splitlines()[1:]:
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[1].strip().isdigit():
                data_owners.add(int(parts[1]))
            elif parts and parts[0].isdigit():
                meta.append(int(parts[0]))  # no inode owns it: superblock, descriptors, bitmaps, journal
    out = [f"{len(blocks)} block(s) of {bs} bytes differ"]
    if meta:
        out.append(f"file system metadata blocks differ (no inode owns them): {meta[:20]}")
    inodes |= data_owners
    paths: dict[int, str] = {}
    if inodes:
        for line in _debugfs(a, offset, "ncheck -c " + " ".join(map(str, sorted(inodes)))).splitlines()[1:]:
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].isdigit():
                paths.setdefault(int(parts[0]), re.sub(r"^/+", "/", parts[1]))
    for ino in sorted(inodes):
        sa, sb = (_stat_fields(_debugfs(x, offset, f"stat <{ino}>")) for x in (a, b))
        changed = sorted(k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k))
        if ino in data_owners:
            changed.append("content")
        if changed:
            out.append(f"inode {ino} {paths.get(ino, '(no path)')}: {', '.join(changed)}")
    return out


def _stat_fields(text: str) -> dict[str, str]:
    """``debugfs stat`` output as field -> value (checksums dropped: they follow the fields)."""
    fields: dict[str, str] = {}
    for m in re.finditer(r"(\w+):\s+(0x[0-9a-f]+:[0-9a-f]+|[^\s]+)", text):
        if m.group(1) not in ("checksum", "Inode"):
            fields.setdefault(m.group(1), m.group(2))
    return fields


def _extract(img: Path, offset: int, kind: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    if kind == "c":  # FAT
        subprocess.run(
            ["mcopy", "-s", "-p", "-m", "-n", "-Q", "-i", f"{img}@@{offset}", "::/", str(dest)],
            check=True,
            env=_ENV,
            capture_output=True,
        )
    else:
        subprocess.run(
            ["debugfs", "-R", f"rdump / {dest}", f"{img}?offset={offset}"], check=True, env=_ENV, capture_output=True
        )


def compare(a: Path, b: Path, work: Path) -> list[str]:
    findings = []
    if _digest(a) == _digest(b):
        return []
    findings.append("the images differ")
    pa, pb = partitions(a), partitions(b)
    if pa != pb:
        return [*findings, f"partition tables differ: {pa} != {pb}"]
    first = min(o for o, _, _ in pa)
    if _digest(a, 0, first) != _digest(b, 0, first):
        findings.append("the bytes before the first partition (MBR) differ")
    for n, ((off, size, kind), da, db) in enumerate(zip(pa, partition_digests(a), partition_digests(b), strict=True)):
        if da == db:
            findings.append(f"partition {n + 1}: identical")
            continue
        blocks = ext4_diff(a, b, off, size) if kind != "c" else []
        ta, tb = work / f"a{n + 1}", work / f"b{n + 1}"
        _extract(a, off, kind, ta)
        _extract(b, off, kind, tb)
        files = diff_trees(ta, tb)
        findings.append(
            f"partition {n + 1}: differs; {len(files)} file(s) differ" + ("" if files else " (layout only)")
        )
        findings += [f"  {line}" for line in (*blocks, *files)]
        shutil.rmtree(ta), shutil.rmtree(tb)
    return findings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m kimage.compare", description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--work", type=Path, help="where to copy the file systems out (default: a temporary directory)")
    args = p.parse_args(argv)
    for img in (args.a, args.b):
        if not img.is_file():
            print(f"kimage.compare: error: {img} is not a file", file=sys.stderr)
            return 64
    with tempfile.TemporaryDirectory(prefix="kimage-compare-", dir=args.work) as tmp:
        findings = compare(args.a, args.b, Path(tmp))
    print("\n".join(findings) if findings else "the images are identical")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

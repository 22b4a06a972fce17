"""kestrel-image: build Kestrel's SD-card image (docs/image.md). Run through image/build.sh."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .boards import BOARDS, get_board
from .cache import Cache
from .disk import DiskLayout, assemble_image
from .overlay import DEFAULT_EXTRAS, build_overlay
from .rootfs import DEFAULT_MIRROR, build_rootfs, clamp_mtimes, packaged_files
from .steps import BuildError, Runner

STAGES = ("rootfs-overlay", "rootfs", "image", "all")
REPO = Path(__file__).resolve().parents[2]


def source_date_epoch(repo: Path) -> int:
    """$SOURCE_DATE_EPOCH, else the commit time of HEAD (reproducible builds)."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%ct"], check=True, capture_output=True, text=True
        ).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        raise BuildError(
            "cannot read the commit time for SOURCE_DATE_EPOCH",
            hint="set SOURCE_DATE_EPOCH or build from a git checkout",
        ) from None


def split_boot(rootfs: Path, bootfs: Path, runner: Runner) -> None:
    """Move rootfs/boot/firmware (the FAT partition's contents) out; leave an empty mount point."""
    src = rootfs / "boot/firmware"
    if runner.dry_run:
        runner.run(["mv", str(src), str(bootfs)], what="separate the boot files")
        return
    if bootfs.exists() and src.is_dir() and not any(src.iterdir()):
        return  # done by an earlier run
    if not src.is_dir() or not any(src.iterdir()):
        raise BuildError(
            f"{src} is empty: the raspi-firmware package put nothing there",
            hint="rerun the rootfs stage (remove the .rootfs-done stamp)",
        )
    shutil.rmtree(bootfs, ignore_errors=True)
    os.rename(src, bootfs)
    src.mkdir(mode=0o755)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="image/build.sh", description=__doc__)
    p.add_argument("--board", default="rpi4", choices=sorted(BOARDS))
    p.add_argument(
        "--stage",
        default="all",
        choices=STAGES + ("overlay",),
        help="rootfs-overlay (no root, no network), rootfs, image, or all (default)",
    )
    p.add_argument("--out", type=Path, help="output directory (default: the cache's out/)")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="build only from the host cache: no download, no compile (exit 75 if something is missing)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        help="host cache of debs, wheels, base systems (default $KESTREL_IMAGE_CACHE or /var/cache/kestrel-image)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the commands of the stages; run nothing")
    p.add_argument(
        "--ref",
        help="build Kestrel from this git commit (default: the work tree, tracked and untracked non-ignored files)",
    )
    p.add_argument("--extras", default=",".join(DEFAULT_EXTRAS), help="Kestrel extras installed in /opt/kestrel")
    p.add_argument("--suite", default="bookworm")
    p.add_argument("--mirror", default=DEFAULT_MIRROR)
    args = p.parse_args(argv)
    runner = Runner(dry_run=args.dry_run)
    try:
        board = get_board(args.board)
        stage = "rootfs-overlay" if args.stage == "overlay" else args.stage
        cache = Cache.from_env(args.cache, cached_only=args.cached_only)
        out = ((args.out or cache.out) / board.name).resolve()
        epoch = source_date_epoch(REPO)
        extras = tuple(e for e in args.extras.split(",") if e)
        if board.lab and "test" not in extras:
            extras += ("test",)  # the lab runs the GPIO contract suite inside the VM
        overlay = out / "overlay"
        if stage in ("rootfs-overlay", "all"):
            build_overlay(REPO, overlay, board=board, runner=runner, epoch=epoch, ref=args.ref, extras=extras)
        if stage == "rootfs" and board.flash == "l4t":
            raise BuildError(
                f"{board.name} runs NVIDIA's L4T root file system, not one built here",
                exit_code=64,
                hint="use --stage rootfs-overlay or all (overlay tarball) and docs/image.md, 'Jetson'",
            )
        if stage in ("rootfs", "all") and board.flash == "sd":
            if not runner.dry_run and not overlay.is_dir():
                raise BuildError(f"{overlay} does not exist", hint="run --stage rootfs-overlay first")
            build_rootfs(
                out, overlay=overlay, board=board, runner=runner, suite=args.suite, mirror=args.mirror, cache=cache
            )
        if stage in ("image", "all"):
            build_image(out, board=board, runner=runner, epoch=epoch)
    except BuildError as exc:
        print(f"kestrel-image: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kestrel-image: interrupted; rerun to finish (unfinished stages start over)", file=sys.stderr)
        return 130
    return 0


def build_image(out: Path, *, board, runner: Runner, epoch: int) -> None:
    rootfs = out / "rootfs"
    if board.flash == "l4t":
        runner.say(f"stage image: {board.name} is flashed with NVIDIA's L4T tools; writing the overlay tarball")
        if not runner.dry_run and not (out / "overlay").is_dir():
            raise BuildError(f"{out / 'overlay'} does not exist", hint="run --stage rootfs-overlay first")
        runner.run(
            [
                "tar",
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                f"--mtime=@{epoch}",
                "-C",
                str(out / "overlay"),
                "-cf",
                str(out / f"kestrel-{board.name}-overlay.tar"),
                ".",
            ],
            what="write the overlay tarball for L4T",
        )
        return
    runner.need_root("image")
    if not runner.dry_run and not (out / ".rootfs-done").exists():
        raise BuildError(f"{rootfs} is not complete", hint="run --stage rootfs first")
    bootfs = out / "bootfs"
    split_boot(rootfs, bootfs, runner)
    if not runner.dry_run:  # split_boot touched /boot and /boot/firmware: their mtimes go in too
        clamp_mtimes(rootfs, epoch, packaged=packaged_files(rootfs))
        clamp_mtimes(bootfs, epoch, packaged=frozenset())  # all of it written by the build
    img = out / f"kestrel-{board.name}.img"
    runner.say(f"stage image: {img}")
    assemble_image(
        bootfs,
        rootfs,
        img,
        layout=DiskLayout(board.boot_mib, board.root_mib, board.data_mib),
        runner=runner,
        epoch=epoch,
        seed=f"kestrel-{board.name}-{epoch}",
    )
    runner.say(f"wrote {img} (flash it: docs/image.md)")


if __name__ == "__main__":
    sys.exit(main())

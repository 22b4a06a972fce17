"""gpio-sim for the lab image's kernel: Debian's arm64 kernels are built without it (and without IRQ_SIM).

The module is cross-compiled on the host (gcc-aarch64-linux-gnu, native speed) as an out-of-tree
build against Debian's own headers for the image's kernel, from the matching ``linux-source``:
``drivers/gpio/gpio-sim.c`` with ``kernel/irq/irq_sim.c`` linked into the same module (the kernel
does not export ``irq_to_desc``, so its one call becomes the exported ``generic_handle_irq``, which
calls the same ``handle_simple_irq`` through the descriptor). The kbuild tools are Debian's amd64
``linux-kbuild`` of the same version; headers and tools are bound at their /usr/src paths with
proot (no files are installed on the host). Cached by kernel version in ``cache/kmod/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .cache import Cache
from .emu import Emulator, private_apt
from .steps import BuildError, Runner

__all__ = ["install_gpio_sim", "dpkg_version", "kernel_version"]

_SOURCES = (
    "drivers/gpio/gpio-sim.c",
    "drivers/gpio/gpiolib.h",
    "drivers/gpio/gpiolib-of.h",
    "drivers/gpio/gpiolib-acpi.h",
    "drivers/gpio/gpiolib-cdev.h",
    "drivers/gpio/gpiolib-sysfs.h",
    "kernel/irq/irq_sim.c",
)
_KBUILD = "obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-core.o irq_sim.o\n"


def kernel_version(rootfs: Path) -> str:
    mods = rootfs / "lib/modules"
    versions = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
    if not versions:
        raise BuildError(f"{rootfs} has no kernel modules", hint="the base system lacks linux-image-arm64")
    return versions[-1]


def dpkg_version(rootfs: Path, package: str) -> str:
    """The installed version of ``package`` from the rootfs's dpkg status file."""
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and fields.get("Status", "").endswith(" installed"):
            return fields["Version"]
    raise BuildError(f"{package} is not installed in {rootfs}")


def _apt_arm64(cache: Cache, runner: Runner) -> list[str]:
    return private_apt(
        cache,
        runner,
        name="apt-arm64",
        arch="arm64",
        sources="deb http://deb.debian.org/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n",
    )


def _build(cache: Cache, kver: str, debver: str, out: Path, runner: Runner) -> None:
    runner.need_tools("aarch64-linux-gnu-gcc", "make", "proot", "apt-get", "dpkg-deb", "xz")
    major = ".".join(kver.split(".")[:2])  # 6.1
    abi = kver.rsplit("-", 1)[0]  # 6.1.0-50
    with tempfile.TemporaryDirectory(prefix="kimage-kmod-", dir=cache.kmod) as tmp:
        t = Path(tmp)
        runner.run(
            [
                "apt-get",
                "download",
                f"linux-source-{major}={debver}",
                f"linux-kbuild-{major}={debver}",
                f"linux-headers-{abi}-common={debver}",
            ],
            cwd=t,
            what="download the kernel source and kbuild",
        )
        runner.run(
            ["apt-get", *_apt_arm64(cache, runner), "download", f"linux-headers-{kver}={debver}"],
            cwd=t,
            what="download the arm64 kernel headers",
        )
        tree = t / "tree"
        for deb in sorted(t.glob("linux-headers-*.deb")) + sorted(t.glob("linux-kbuild-*.deb")):
            runner.run(["dpkg-deb", "-x", str(deb), str(tree)], what=f"unpack {deb.name}")
        (src_deb,) = t.glob("linux-source-*.deb")
        src = t / "src"
        src.mkdir()
        members = [f"linux-source-{major}/{p}" for p in _SOURCES]
        cmd = (
            f"dpkg-deb --fsys-tarfile {src_deb} | tar -xO ./usr/src/linux-source-{major}.tar.xz | xz -dc "
            f"| tar -x -C {src} {' '.join(members)}"
        )
        runner.run(["sh", "-c", cmd], what="extract gpio-sim and irq_sim from linux-source")
        build = t / "build"
        build.mkdir()
        for rel in _SOURCES:
            name = "gpio-sim-core.c" if rel.endswith("gpio-sim.c") else Path(rel).name
            shutil.copy2(src / f"linux-source-{major}" / rel, build / name)
        irq = build / "irq_sim.c"
        text = irq.read_text()
        if "handle_simple_irq(irq_to_desc(irqnum));" not in text:
            raise BuildError(
                f"irq_sim.c of {debver} is not the one this recipe patches",
                hint="update image/kimage/kmod.py for this kernel",
            )
        irq.write_text(text.replace("handle_simple_irq(irq_to_desc(irqnum));", "generic_handle_irq(irqnum);"))
        (build / "Kbuild").write_text(_KBUILD)
        binds = []
        for rel in (
            f"usr/src/linux-headers-{kver}",
            f"usr/src/linux-headers-{abi}-common",
            f"usr/lib/linux-kbuild-{major}",
        ):
            binds += ["-b", f"{tree / rel}:/{rel}"]
        runner.run(
            [
                "nice",
                "-n",
                "10",
                "proot",
                *binds,
                "make",
                "-s",
                "-C",
                f"/usr/src/linux-headers-{kver}",
                f"M={build}",
                "ARCH=arm64",
                "CROSS_COMPILE=aarch64-linux-gnu-",
                "modules",
            ],
            what=f"cross-compile gpio-sim for {kver}",
        )
        runner.run(
            ["aarch64-linux-gnu-strip", "--strip-debug", str(build / "gpio-sim.ko")],
            what="strip the module's debug symbols",
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "gpio-sim.ko", f"{out}.tmp")
        os.replace(f"{out}.tmp", out)


def install_gpio_sim(rootfs: Path, *, cache: Cache, runner: Runner, emu: Emulator) -> None:
    """Put gpio-sim.ko for the rootfs's kernel into lib/modules/KVER/extra and run depmod."""
    if runner.dry_run:
        runner.run(
            ["make", "-C", "/usr/src/linux-headers-KVER", "M=...", "ARCH=arm64", "modules"],
            what="cross-compile gpio-sim",
        )
        return
    kver = kernel_version(rootfs)
    debver = dpkg_version(rootfs, f"linux-image-{kver}")
    ko = cache.kmod / kver / debver / "gpio-sim.ko"
    if ko.exists():
        runner.say(f"gpio-sim for {kver} from the cache")
    else:
        cache.miss(f"gpio-sim for {kver} ({debver})")
        _build(cache, kver, debver, ko, runner)
    dest = rootfs / "lib/modules" / kver / "extra"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ko, dest / "gpio-sim.ko")
    emu.run(["depmod", kver], what="index the kernel modules (depmod)")

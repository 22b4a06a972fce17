"""Out-of-tree kernel modules for an image's kernel, where Debian's arm64 kernel lacks the driver.

Each module is a ``Recipe``: the files it takes from the kernel's own ``linux-source`` (renamed
where two objects link into one module), a Kbuild file, and textual patches (each must match, or
the build stops). One build function cross-compiles any recipe on the host
(gcc-aarch64-linux-gnu, native speed) against Debian's own headers for the image's kernel
(``linux-headers-KVER`` arm64 and ``linux-headers-ABI-common``), with Debian's host-architecture
``linux-kbuild`` of the same version for the build tools; headers and tools are bound at their
/usr/src and /usr/lib paths with proot (nothing is installed on the host). The packages come
through private apt indexes in the cache (bookworm, its security suite and bookworm-backports).
Cached by kernel version and Debian version in ``cache/kmod/``.

* ``gpio-sim`` (the lab): Debian's kernels have neither gpio-sim nor IRQ_SIM; ``kernel/irq/irq_sim.c``
  is linked into the module, its one call of the unexported ``irq_to_desc`` replaced by the exported
  ``generic_handle_irq``, which calls the same ``handle_simple_irq`` through the descriptor.
* ``sdhci-brcmstb`` and ``gpio-brcmstb`` (the Pi 5): the BCM2712's SD controller and the GPIO
  controller that drives the card's supply regulators; both depend only on modules Debian builds
  (``sdhci``, ``sdhci-pltfm``, ``cqhci``) or built-in code (``GPIO_GENERIC``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cache import Cache
from .emu import Emulator, private_apt
from .packages import installed_packages
from .steps import BuildError, Runner

__all__ = ["RECIPES", "Recipe", "dpkg_version", "install_modules", "kernel_version"]


@dataclass(frozen=True)
class Recipe:
    name: str  # the module (NAME.ko)
    sources: tuple[str, ...]  # paths in the kernel source tree, copied flat into the build directory
    kbuild: str
    renames: tuple[tuple[str, str], ...] = ()  # (source path, name in the build directory)
    patches: tuple[tuple[str, str, str], ...] = ()  # (file in the build directory, old text, new text)
    initramfs: bool = False  # the board's initrd needs it (a root file system behind it)


_GPIOLIB_H = tuple(
    f"drivers/gpio/{h}" for h in ("gpiolib.h", "gpiolib-of.h", "gpiolib-acpi.h", "gpiolib-cdev.h", "gpiolib-sysfs.h")
)
RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "gpio-sim",
            ("drivers/gpio/gpio-sim.c", *_GPIOLIB_H, "kernel/irq/irq_sim.c"),
            "obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-core.o irq_sim.o\n",
            renames=(("drivers/gpio/gpio-sim.c", "gpio-sim-core.c"),),
            patches=(("irq_sim.c", "handle_simple_irq(irq_to_desc(irqnum));", "generic_handle_irq(irqnum);"),),
        ),
        Recipe(
            "sdhci-brcmstb",
            tuple(
                f"drivers/mmc/host/{f}"
                for f in ("sdhci-brcmstb.c", "sdhci.h", "sdhci-pltfm.h", "cqhci.h", "sdhci-cqhci.h")
            ),
            "obj-m := sdhci-brcmstb.o\n",
            initramfs=True,
        ),
        Recipe("gpio-brcmstb", ("drivers/gpio/gpio-brcmstb.c",), "obj-m := gpio-brcmstb.o\n", initramfs=True),
    )
}
_SYMVERS = "Module.symvers"
_SUITES = (
    "deb http://deb.debian.org/debian bookworm main\n"
    "deb http://security.debian.org/debian-security bookworm-security main\n"
    "deb http://deb.debian.org/debian bookworm-backports main\n"
)


def kernel_version(rootfs: Path) -> str:
    mods = rootfs / "lib/modules"
    versions = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
    if not versions:
        raise BuildError(f"{rootfs} has no kernel modules", hint="the base system lacks linux-image-arm64")
    return versions[-1]


def dpkg_version(rootfs: Path, package: str) -> str:
    """The installed version of ``package`` from the rootfs's dpkg status file."""
    for p in installed_packages(rootfs):
        if p["package"] == package:
            return p["version"]
    raise BuildError(f"{package} is not installed in {rootfs}")


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def _kernel_tree(cache: Cache, kver: str, debver: str, t: Path, runner: Runner) -> tuple[Path, Path]:
    """Download and unpack the headers, kbuild and source of ``kver`` into ``t``: (tree, source)."""
    major = ".".join(kver.split(".")[:2])  # 6.1
    abi = kver.rsplit("-", 1)[0]  # 6.1.0-50, 6.12.95+deb12
    host = private_apt(cache, runner, name=f"apt-{_host_arch()}", arch=_host_arch(), sources=_SUITES)
    arm64 = private_apt(cache, runner, name="apt-arm64", arch="arm64", sources=_SUITES)
    # linux-kbuild-6.1 up to 6.1; linux-kbuild-ABI (6.12.95+deb12) since
    versioned = subprocess.run(
        ["apt-cache", *host, "show", f"linux-kbuild-{abi}={debver}"], capture_output=True
    ).returncode
    kbuild = f"linux-kbuild-{abi}" if versioned == 0 else f"linux-kbuild-{major}"
    runner.run(
        [
            "apt-get",
            *host,
            "download",
            f"linux-source-{major}={debver}",
            f"{kbuild}={debver}",
            f"linux-headers-{abi}-common={debver}",
        ],
        cwd=t,
        what="download the kernel source and kbuild",
    )
    runner.run(
        ["apt-get", *arm64, "download", f"linux-headers-{kver}={debver}"],
        cwd=t,
        what="download the arm64 kernel headers",
    )
    tree = t / "tree"
    for deb in sorted(t.glob("linux-headers-*.deb")) + sorted(t.glob("linux-kbuild-*.deb")):
        runner.run(["dpkg-deb", "-x", str(deb), str(tree)], what=f"unpack {deb.name}")
    (src_deb,) = t.glob("linux-source-*.deb")
    src = t / "src"
    src.mkdir()
    cmd = (
        f"dpkg-deb --fsys-tarfile {src_deb} | tar -xO ./usr/src/linux-source-{major}.tar.xz | xz -dc "
        f"| tar -x -C {src} --wildcards 'linux-source-{major}/drivers/*' 'linux-source-{major}/kernel/*'"
    )
    runner.run(["sh", "-c", cmd], what="extract drivers/ and kernel/ from linux-source")
    return tree, src / f"linux-source-{major}"


def _build(recipe: Recipe, *, kver: str, tree: Path, src: Path, build: Path, runner: Runner) -> Path:
    """Cross-compile ``recipe`` in ``build`` against the headers in ``tree``; the stripped .ko."""
    build.mkdir()
    renames = dict(recipe.renames)
    for rel in recipe.sources:
        if not (src / rel).exists():
            raise BuildError(f"{rel} is not in the source of {kver}", hint=f"update the {recipe.name} recipe (kmod.py)")
        shutil.copy2(src / rel, build / renames.get(rel, Path(rel).name))
    for name, old, new in recipe.patches:
        text = (build / name).read_text()
        if old not in text:
            raise BuildError(
                f"{name} of {kver} is not the one the {recipe.name} recipe patches",
                hint="update image/kimage/kmod.py for this kernel",
            )
        (build / name).write_text(text.replace(old, new))
    (build / "Kbuild").write_text(recipe.kbuild)
    binds = []
    for top in ("usr/src", "usr/lib"):
        for d in sorted((tree / top).glob("linux-*")):
            binds += ["-b", f"{d}:/{top}/{d.name}"]
    runner.run(
        [
            *("nice", "-n", "10", "unshare", "--mount", "--propagation", "private", "proot", *binds),
            *("make", "-s", "-C", f"/usr/src/linux-headers-{kver}", f"M={build}"),
            *("ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"),
        ],
        what=f"cross-compile {recipe.name} for {kver}",
    )
    ko = build / f"{recipe.name}.ko"
    runner.run(["aarch64-linux-gnu-strip", "--strip-debug", str(ko)], what=f"strip {recipe.name}'s debug symbols")
    return ko


def _cached(cache: Cache, recipes: list[Recipe], kver: str, debver: str, runner: Runner) -> list[Path]:
    """Each recipe's module for ``kver`` from the cache, built (all missing ones at once) if absent."""
    kos = [cache.kmod / kver / debver / f"{r.name}.ko" for r in recipes]
    missing = [r for r, ko in zip(recipes, kos, strict=True) if not ko.exists()]
    for r in recipes:
        if r not in missing:
            runner.say(f"{r.name} for {kver} from the cache")
    if not missing:
        return kos
    cache.miss(f"{', '.join(r.name for r in missing)} for {kver} ({debver})")
    runner.need_tools("aarch64-linux-gnu-gcc", "make", "proot", "unshare", "apt-get", "apt-cache", "dpkg-deb", "xz")
    with tempfile.TemporaryDirectory(prefix="kimage-kmod-", dir=cache.kmod) as tmp:
        t = Path(tmp)
        tree, src = _kernel_tree(cache, kver, debver, t, runner)
        built = [_build(r, kver=kver, tree=tree, src=src, build=t / f"build-{r.name}", runner=runner) for r in missing]
        # the kernel's exported symbols and their CRCs, for depmod's check when the modules are installed
        for path in (tree / "usr/src" / f"linux-headers-{kver}" / _SYMVERS, *built):
            out = cache.kmod / kver / debver / path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, f"{out}.tmp")
            os.replace(f"{out}.tmp", out)
    return kos


def install_modules(rootfs: Path, names: tuple[str, ...], *, cache: Cache, runner: Runner, emu: Emulator) -> None:
    """Put the modules ``names`` (``RECIPES``) for the rootfs's kernel into lib/modules/KVER/extra, depmod."""
    if not names:
        return
    recipes = [RECIPES[n] for n in names]
    if runner.dry_run:
        for r in recipes:
            runner.run(
                ["make", "-C", "/usr/src/linux-headers-KVER", f"M=.../build-{r.name}", "ARCH=arm64", "modules"],
                what=f"cross-compile {r.name}",
            )
        return
    kver = kernel_version(rootfs)
    debver = dpkg_version(rootfs, f"linux-image-{kver}")
    dest = rootfs / "lib/modules" / kver / "extra"
    dest.mkdir(parents=True, exist_ok=True)
    for ko in _cached(cache, recipes, kver, debver, runner):
        shutil.copy2(ko, dest / ko.name)
    symvers = cache.kmod / kver / debver / _SYMVERS
    if not symvers.exists():  # a module cached before the recipe kept the kernel's symbol list
        emu.run(["depmod", kver], what="index the kernel modules (depmod)")
        return
    # depmod -e: every symbol the modules use is exported by the kernel or a module, with the same CRC
    shutil.copy2(symvers, rootfs / "run/kestrel-Module.symvers")
    try:
        report = emu.output(
            ["sh", "-c", f"depmod -e -E /run/kestrel-Module.symvers {kver} 2>&1"],
            what="index the kernel modules and check their symbols (depmod -e)",
        )
    finally:
        (rootfs / "run/kestrel-Module.symvers").unlink()
    unresolved = [line for line in report.splitlines() if "/extra/" in line]
    if unresolved:
        raise BuildError(
            f"the out-of-tree modules do not link against {kver}:\n    " + "\n    ".join(unresolved[:15]),
            hint="update the recipe in image/kimage/kmod.py for this kernel",
        )
    runner.say(f"{', '.join(names)}: every symbol resolves against {kver} (depmod -e, Module.symvers)")

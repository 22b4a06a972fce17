"""The wheels the image's venv is installed from, for CPython 3.11 on aarch64, kept in the host cache.

PyPI has aarch64 wheels for most of Kestrel's dependencies: ``pip download --platform ...`` fetches
them on the host. tpm2-pytss and hnswlib are sdist only: each is compiled once, under proot +
qemu-aarch64-static in a builder copy of the base system (build-essential, python3-dev,
libtss2-dev), and its wheel is cached by version. The venv is then installed offline
(``pip install --no-index --find-links``) from these directories.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .boards import BUILD_PACKAGES
from .cache import Cache
from .emu import Emulator
from .steps import BuildError, Runner

__all__ = ["WheelSet", "ensure_wheels", "SDIST_ONLY", "PLATFORMS", "requirements"]

REPO = Path(__file__).resolve().parents[2]
SDIST_ONLY = ("tpm2-pytss", "hnswlib")
# Debian bookworm has glibc 2.36: every manylinux tag up to it, plus plain linux for the wheels built here.
PLATFORMS = ("linux_aarch64", "manylinux2014_aarch64", *(f"manylinux_2_{n}_aarch64" for n in range(17, 37)))


@dataclass(frozen=True)
class WheelSet:
    dirs: tuple[Path, ...]  # --find-links directories, in order


def requirements(*, extras: tuple[str, ...], repo: Path = REPO) -> list[str]:
    """Kestrel's requirements for ``extras`` as pip specifiers (read from pyproject.toml)."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"].get(extra, [])
    return reqs


def _name(spec: str) -> str:
    for i, c in enumerate(spec):
        if not (c.isalnum() or c in "-_."):
            return spec[:i].lower().replace("_", "-")
    return spec.lower().replace("_", "-")


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def ensure_wheels(cache: Cache, *, runner: Runner, base: Path, qemu: Path, extras: tuple[str, ...]) -> WheelSet:
    reqs = requirements(extras=extras)
    key = hashlib.sha256("\n".join(sorted(reqs) + list(PLATFORMS)).encode()).hexdigest()[:16]
    stamp = cache.wheels / f".complete-{key}"
    sets = WheelSet(dirs=(cache.built, cache.wheels))
    if stamp.exists():
        runner.say(f"wheels from the cache: {cache.wheels}, {cache.built}")
        return sets
    cache.miss("the aarch64 wheel set for " + ",".join(extras))
    if not runner.dry_run:
        cache.ensure()
    for spec in (r for r in reqs if _name(r) in SDIST_ONLY):
        _build_sdist(cache, spec, runner=runner, base=base, qemu=qemu)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    runner.run(
        _pip(
            "download",
            "-q",
            *platform_args,
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--abi",
            "abi3",
            "--abi",
            "none",
            "--only-binary=:all:",
            "--find-links",
            str(cache.built),
            "-d",
            str(cache.wheels),
            *reqs,
        ),
        what="download the aarch64 wheels from PyPI",
    )
    if not runner.dry_run:
        stamp.write_text("\n".join(reqs) + "\n")
    return sets


def _build_sdist(cache: Cache, spec: str, *, runner: Runner, base: Path, qemu: Path) -> None:
    name = _name(spec)
    runner.run(
        _pip("download", "-q", "--no-deps", "--no-binary", name, "-d", str(cache.sdist), spec),
        what=f"download the {name} sdist",
    )
    if runner.dry_run:
        return
    prefix = name.replace("-", "_")
    sdists = sorted(cache.sdist.glob(f"{prefix}-*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not sdists:
        raise BuildError(f"no {name} sdist in {cache.sdist} after pip download")
    sdist = sdists[-1]
    version = sdist.name[len(prefix) + 1 : -len(".tar.gz")]
    if list(cache.built.glob(f"{prefix}-{version}-*.whl")):
        return
    runner.say(f"compiling {sdist.name} for aarch64 under proot + qemu-user (once; cached by version)")
    builder = _builder(cache, runner=runner, base=base, qemu=qemu)
    # pip fetches the build dependencies (setuptools, pybind11, ...) from PyPI: trust what the host
    # trusts (a host behind a TLS-inspecting proxy has its CA there, not in Debian's bundle).
    binds = [(cache.sdist, "/run/sdist"), (cache.built, "/run/built"), (Path(_host_ca()), "/run/host-ca.crt")]
    emu = Emulator(builder, qemu=qemu, runner=runner, binds=binds)
    emu.run(
        [
            "/opt/build/bin/pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            "/run/built",
            f"/run/sdist/{sdist.name}",
        ],
        env={"HNSWLIB_NO_NATIVE": "1", "PIP_CERT": "/run/host-ca.crt"},
        what=f"compile {sdist.name} for aarch64",
    )


def _host_ca() -> str:
    import ssl

    for path in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if path and os.path.isfile(path):
            return path
    raise BuildError("no CA bundle on the host for pip in the builder", hint="apt-get install ca-certificates")


def _builder(cache: Cache, *, runner: Runner, base: Path, qemu: Path) -> Path:
    """A copy of the base system with the compilers (reused while the base is the same)."""
    builder = cache.root / "builder"
    ready = builder / ".kestrel-builder-ready"
    if ready.exists() and ready.read_text().strip() == base.name:
        return builder
    shutil.rmtree(builder, ignore_errors=True)
    builder.mkdir(parents=True)
    runner.run(["tar", "--numeric-owner", "-C", str(builder), "-xf", str(base)], what="unpack the builder system")
    shutil.copy2("/etc/resolv.conf", builder / "etc/resolv.conf")
    (builder / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    emu = Emulator(builder, qemu=qemu, runner=runner, binds=[(cache.debs, "/var/cache/apt/archives")])
    emu.run(["apt-get", "update", "-q"], what="update the builder's package lists")
    emu.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *BUILD_PACKAGES],
        what="install the compilers into the builder",
    )
    emu.run(["python3", "-m", "venv", "/opt/build"], what="create the builder venv")
    ready.write_text(base.name + "\n")
    return builder


def wheel_hashes(dirs: tuple[Path, ...]) -> dict[str, str]:
    """file name -> SHA-256 of every wheel in ``dirs`` (the first directory wins on a duplicate)."""
    out: dict[str, str] = {}
    for d in dirs:
        for whl in sorted(d.glob("*.whl")):
            if whl.name not in out:
                out[whl.name] = hashlib.sha256(whl.read_bytes()).hexdigest()
    return out

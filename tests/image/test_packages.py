"""Which packages the image takes from bookworm-security and -updates (kimage/packages.py): pure, no image."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kimage.packages import compare_versions, pending_updates
from kimage.rootfs import UPDATE_HOLD, dpkg_steps, simulated_debs

STATUS = """Package: libssl3
Status: install ok installed
Architecture: arm64
Version: 3.0.20-1~deb12u2
Description: Secure Sockets Layer toolkit
 a continuation line: Version: 9.9

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2026b-0+deb12u1

Package: zlib1g
Status: install ok installed
Architecture: arm64
Version: 1:1.2.13.dfsg-1

Package: ca-certificates
Status: install ok installed
Architecture: all
Version: 20250419~deb12u2

Package: removed-one
Status: deinstall ok config-files
Architecture: arm64
Version: 1.0-1

Package: linux-image-arm64
Status: install ok installed
Architecture: arm64
Version: 6.1.176-1

Package: dash
Status: install ok installed
Architecture: arm64
Version: 0.5.12-2
"""

INDEX = """Package: libssl3
Version: 3.0.21-1~deb12u1
Architecture: arm64

Package: libssl3
Version: 3.0.22-1~deb12u2
Architecture: arm64

Package: libssl3
Version: 3.0.99-1
Architecture: amd64

Package: tzdata
Version: 2026f-0+deb12u1
Architecture: all

Package: zlib1g
Version: 1.2.13.dfsg-1+deb12u9
Architecture: arm64

Package: zlib1g
Version: 1:1.2.13.dfsg-1+deb12u1
Architecture: arm64

Package: ca-certificates
Version: 20250419~deb12u1
Architecture: all

Package: removed-one
Version: 2.0-1
Architecture: arm64

Package: linux-image-arm64
Version: 6.1.192-3
Architecture: arm64

Package: not-installed
Version: 1.0
Architecture: arm64
"""


def test_only_installed_packages_with_a_newer_version_of_their_architecture_are_updated() -> None:
    got = {u.package: (u.installed, u.candidate) for u in pending_updates(STATUS, INDEX)}
    assert got == {
        "libssl3": ("3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),  # the newest arm64 one, not amd64's
        "tzdata": ("2026b-0+deb12u1", "2026f-0+deb12u1"),  # Architecture: all
        "zlib1g": ("1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1"),  # an epoch outranks the rest
        "linux-image-arm64": ("6.1.176-1", "6.1.192-3"),
    }
    # ca-certificates: the index's is older; removed-one: not installed; dash: not in the index


def test_held_packages_stay_and_specs_pin_the_version() -> None:
    updates = pending_updates(STATUS, INDEX, hold=UPDATE_HOLD)
    assert "linux-image-arm64" not in {u.package for u in updates}
    assert [u.spec for u in updates][:1] == ["libssl3=3.0.22-1~deb12u2"]
    assert pending_updates(STATUS, "") == []
    assert pending_updates(STATUS, STATUS) == []  # the same versions: nothing to do


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1.0~rc1", "1.0"),
        ("1.0", "1.0-1"),
        ("1.0-1", "1.0+deb12u1"),
        ("2.36-9+deb12u7", "2.36-9+deb12u10"),
        ("20230311+deb12u1", "20250419~deb12u2"),
        ("9.9", "1:0.1"),
        ("1.0a", "1.0.1"),
        ("1.0-1~bpo12+1", "1.0-1"),
    ],
)
def test_debian_version_order(a: str, b: str) -> None:
    assert compare_versions(a, b) < 0 < compare_versions(b, a)
    assert compare_versions(a, a) == 0
    if shutil.which("dpkg"):  # the reference: dpkg's own order
        assert subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def test_simulated_install_names_the_debs_as_apt_stores_them() -> None:
    out = (
        "Inst libssl3 [3.0.20-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [arm64])\n"
        "Inst zlib1g [1:1.2.13.dfsg-1] (1:1.2.13.dfsg-1+deb12u1 Debian:12.13/oldstable [arm64])\n"
        "Inst tzdata [2026b-0+deb12u1] (2026f-0+deb12u1 Debian:12.13/oldstable-updates [all])\n"
        "Inst linux-image-6.12.48+deb12-arm64 (6.12.48-1~bpo12+1 Debian Backports:bookworm-backports [arm64])\n"
        "Conf libssl3 (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [arm64])\n"
    )
    assert simulated_debs(out) == [
        "libssl3_3.0.22-1~deb12u2_arm64.deb",
        "zlib1g_1%3a1.2.13.dfsg-1+deb12u1_arm64.deb",
        "tzdata_2026f-0+deb12u1_all.deb",
        "linux-image-6.12.48+deb12-arm64_6.12.48-1~bpo12+1_arm64.deb",
    ]


def test_dpkg_follows_apts_order_so_pre_depends_are_configured_first() -> None:
    out = (
        "Inst libpam-modules-bin [1.5.2-6+deb12u2] (1.5.2-6+deb12u3 Debian-Security:12 [arm64])\n"
        "Conf libpam-modules-bin (1.5.2-6+deb12u3 Debian-Security:12 [arm64])\n"
        "Inst libpam-modules [1.5.2-6+deb12u2] (1.5.2-6+deb12u3 Debian-Security:12 [arm64])\n"
        "Inst zlib1g [1:1.2.13.dfsg-1] (1:1.2.13.dfsg-1+deb12u1 Debian:12 [arm64])\n"
        "Conf libpam-modules (1.5.2-6+deb12u3 Debian-Security:12 [arm64])\n"
        "Conf zlib1g (1:1.2.13.dfsg-1+deb12u1 Debian:12 [arm64])\n"
    )
    assert dpkg_steps(out, debs="/d") == [
        ["dpkg", "--unpack", "/d/libpam-modules-bin_1.5.2-6+deb12u3_arm64.deb"],
        ["dpkg", "--configure", "libpam-modules-bin"],
        [
            "dpkg",
            "--unpack",
            "/d/libpam-modules_1.5.2-6+deb12u3_arm64.deb",
            "/d/zlib1g_1%3a1.2.13.dfsg-1+deb12u1_arm64.deb",
        ],
        ["dpkg", "--configure", "libpam-modules", "zlib1g"],
    ]
    assert dpkg_steps("Reading package lists...\n0 upgraded, 0 newly installed\n", debs="/d") == []

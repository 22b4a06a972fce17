"""Fixtures of the I/O tests: GPIO factories for every available backend, profiles."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kestrel.io.boards import BoardProfile, load_profile


@pytest.fixture
def sim_profile() -> BoardProfile:
    return load_profile("sim")


@dataclass
class GpioRig:
    """A pin factory plus a way to drive an input line from outside (the test's hand)."""

    factory: object
    drive: Callable[[str, int], None]  # (pin name, level)
    backend: str


def _gpio_sim_chip() -> str | None:
    """A Linux gpio-sim chip (kernel module gpio-sim, configured through configfs), if any."""
    for dev in sorted(glob.glob("/dev/gpiochip*")):
        name = os.path.basename(dev)
        label = glob.glob(f"/sys/devices/platform/gpio-sim.*/{name}")
        if label:
            return name
    return None


@pytest.fixture(params=["sim", "gpiod"])
def gpio_rig(request, sim_profile: BoardProfile) -> Iterator[GpioRig]:
    from kestrel.io.gpio import open_pin_factory

    if request.param == "sim":
        factory = open_pin_factory(sim_profile)

        def drive(pin: str, level: int) -> None:
            ref = sim_profile.resolve_pin(pin)
            factory.chip(ref.chip).drive(ref.line, level)

        yield GpioRig(factory, drive, "sim")
        factory.close()
        return
    pytest.importorskip("gpiod", reason="gpiod package not installed")
    chip = _gpio_sim_chip()
    if chip is None:
        pytest.skip(
            "no Linux gpio-sim chip (/dev/gpiochipN from the gpio-sim kernel module) on this machine; "
            "the gpiod backend is tested here only up to the missing-chip error"
        )
    import dataclasses

    profile = dataclasses.replace(
        sim_profile,
        gpio_backend="gpiod",
        chips={chip: None},
        pins={n: dataclasses.replace(r, chip=chip, chip_label=None) for n, r in sim_profile.pins.items()},
    )
    factory = open_pin_factory(profile)

    def drive_sysfs(pin: str, level: int) -> None:
        ref = profile.resolve_pin(pin)
        (path,) = glob.glob(f"/sys/devices/platform/gpio-sim.*/{chip}/sim_gpio{ref.line}/pull")
        with open(path, "w") as fh:
            fh.write("pull-up" if level else "pull-down")

    yield GpioRig(factory, drive_sysfs, "gpiod")
    factory.close()

"""The gpiod backend as far as this machine allows: settings translation, chip lookup, errors."""

from __future__ import annotations

import dataclasses
import glob
from datetime import timedelta

import pytest

from kestrel.io.boards import PinRef, load_profile
from kestrel.io.errors import GpioError, PinConfigError
from kestrel.io.gpio import Bias, Edge, open_pin_factory

gpiod = pytest.importorskip("gpiod", reason="gpiod package not installed")
from gpiod.line import Bias as GBias  # noqa: E402
from gpiod.line import Direction, Value  # noqa: E402
from gpiod.line import Edge as GEdge  # noqa: E402

from kestrel.io.gpio_gpiod import find_chip, input_settings, output_settings  # noqa: E402


@pytest.mark.parametrize(
    "edge,gedge",
    [(Edge.NONE, GEdge.NONE), (Edge.RISING, GEdge.RISING), (Edge.FALLING, GEdge.FALLING), (Edge.BOTH, GEdge.BOTH)],
)
def test_input_edge_translation(edge, gedge):
    s = input_settings(edge=edge, bias=Bias.DISABLED, debounce_ms=0, active_low=False)
    assert s.direction == Direction.INPUT and s.edge_detection == gedge


@pytest.mark.parametrize(
    "bias,gbias", [(Bias.DISABLED, GBias.DISABLED), (Bias.PULL_UP, GBias.PULL_UP), (Bias.PULL_DOWN, GBias.PULL_DOWN)]
)
def test_input_bias_translation(bias, gbias):
    assert input_settings(edge=Edge.BOTH, bias=bias, debounce_ms=0, active_low=False).bias == gbias


def test_debounce_and_active_low_translation():
    s = input_settings(edge=Edge.BOTH, bias=Bias.PULL_UP, debounce_ms=2.5, active_low=True)
    assert s.debounce_period == timedelta(microseconds=2500)
    assert s.active_low is True


def test_output_translation():
    s = output_settings(initial=1, active_low=False)
    assert s.direction == Direction.OUTPUT and s.output_value == Value.ACTIVE
    assert output_settings(initial=0, active_low=True).output_value == Value.INACTIVE
    with pytest.raises(PinConfigError):
        output_settings(initial=3, active_low=False)


def test_bad_input_options_rejected_before_touching_hardware():
    with pytest.raises(PinConfigError, match="debounce_ms"):
        input_settings(edge=Edge.BOTH, bias=Bias.DISABLED, debounce_ms=5000, active_low=False)


def test_missing_chip_is_a_clear_error(tmp_path):
    ref = PinRef(chip="gpiochip4", line=17, name="GPIO17", chip_label="pinctrl-rp1")
    with pytest.raises(GpioError, match=r"GPIO chip gpiochip4 \(label pinctrl-rp1\) for pin GPIO17 not found") as ei:
        find_chip(ref, dev_dir=str(tmp_path))
    assert "no GPIO chips" in str(ei.value) and "--board sim" in str(ei.value)


def _dev(tmp_path, labels: dict[str, str]):
    for name in labels:
        (tmp_path / name).touch()
    return lambda path: labels.get(path.rsplit("/", 1)[-1])


def test_pi5_chip_found_by_label_under_either_number(tmp_path):
    ref = load_profile("rpi5").resolve_pin("GPIO17")
    old_kernel = {"gpiochip0": "gpio-brcmstb@107d508500", "gpiochip4": "pinctrl-rp1"}
    assert find_chip(ref, dev_dir=str(tmp_path / "old"), label_of=_dev(_mk(tmp_path / "old"), old_kernel)) == str(
        tmp_path / "old" / "gpiochip4"
    )
    new_kernel = {"gpiochip0": "pinctrl-rp1", "gpiochip10": "gpio-brcmstb@107d508500"}
    assert find_chip(ref, dev_dir=str(tmp_path / "new"), label_of=_dev(_mk(tmp_path / "new"), new_kernel)) == str(
        tmp_path / "new" / "gpiochip0"
    )


def test_wrong_board_chip_label_is_refused(tmp_path):
    ref = load_profile("rpi5").resolve_pin("GPIO17")  # a Pi 5 profile on a Pi 4
    with pytest.raises(GpioError, match=r"present: .*gpiochip0"):
        find_chip(ref, dev_dir=str(tmp_path), label_of=_dev(tmp_path, {"gpiochip0": "pinctrl-bcm2711"}))


def _mk(d):
    d.mkdir()
    return d


def test_a_file_that_is_not_a_chip_is_not_accepted(tmp_path):
    (tmp_path / "gpiochip0").write_bytes(b"not a device")
    with pytest.raises(GpioError, match="not found"):
        find_chip(PinRef(chip="gpiochip0", line=1, name="GPIO1"), dev_dir=str(tmp_path))


@pytest.mark.skipif(bool(glob.glob("/dev/gpiochip*")), reason="this machine has GPIO chips")
def test_factory_on_a_board_without_chips_fails_clearly():
    profile = load_profile("rpi5")
    factory = open_pin_factory(profile)
    assert factory.backend == "gpiod"
    with pytest.raises(GpioError, match="pinctrl-rp1"):
        factory.input("GPIO17")
    with pytest.raises(PinConfigError, match="unknown pin"):
        factory.output("GPIO77")
    factory.close()


@pytest.mark.skipif(bool(glob.glob("/dev/gpiochip*")), reason="this machine has GPIO chips")
def test_cli_style_error_has_exit_code_and_hint():
    profile = dataclasses.replace(load_profile("rpi4"))
    with pytest.raises(GpioError) as ei:
        open_pin_factory(profile).output("PIN11")
    assert ei.value.exit_code == 3 and ei.value.hint

"""Board profiles: the shipped files, pin maps, auto detection, malformed profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.errors import ConfigError
from kestrel.io.boards import available_profiles, detect_board, load_profile, parse_profile, profile_dirs
from kestrel.io.errors import PinConfigError

SHIPPED = ["rpi4", "rpi5", "rpi-zero-2w", "jetson-nano", "jetson-orin-nano", "sim", "qemu-arm64"]
REPO_DIR = Path(__file__).resolve().parents[2] / "board_profiles"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name):
    p = load_profile(name)
    assert p.name == name and p.memory_budget_mb >= 128 and p.ort_intra_threads >= 1
    assert p.resolve_pin("PIN11").line == p.resolve_pin("GPIO17").line
    assert Path(p.source).name == f"{name}.yaml"


def test_package_copy_is_the_repository_directory():
    pkg = Path(__import__("kestrel.io.boards").io.boards.__file__).parent / "board_profiles"
    assert sorted(f.name for f in pkg.glob("*.yaml")) == sorted(f"{n}.yaml" for n in SHIPPED)
    for f in pkg.glob("*.yaml"):
        assert f.read_bytes() == (REPO_DIR / f.name).read_bytes()


@pytest.mark.parametrize("name", ["rpi4", "rpi5", "rpi-zero-2w", "sim"])
def test_raspberry_pi_header_map(name):
    p = load_profile(name)
    # physical pin -> BCM number (pinout.xyz); the line offset is the BCM number
    for pin, bcm in {
        3: 2,
        5: 3,
        7: 4,
        11: 17,
        12: 18,
        13: 27,
        15: 22,
        16: 23,
        18: 24,
        19: 10,
        21: 9,
        23: 11,
        24: 8,
        26: 7,
        27: 0,
        28: 1,
        29: 5,
        31: 6,
        32: 12,
        33: 13,
        35: 19,
        36: 16,
        37: 26,
        38: 20,
        40: 21,
        8: 14,
        10: 15,
        22: 25,
    }.items():
        ref = p.resolve_pin(f"PIN{pin}")
        assert (ref.chip, ref.line) == ("gpiochip0", bcm), pin
    with pytest.raises(PinConfigError):
        p.resolve_pin("PIN1")  # 3.3 V, not a GPIO


def test_chip_labels_and_pi5_chip():
    assert load_profile("rpi4").resolve_pin("GPIO4").chip_label == "pinctrl-bcm2711"
    assert load_profile("rpi-zero-2w").resolve_pin("GPIO4").chip_label == "pinctrl-bcm2835"
    pi5 = load_profile("rpi5").resolve_pin("GPIO17")
    assert (pi5.chip, pi5.line, pi5.chip_label) == ("gpiochip0", 17, "pinctrl-rp1")


def test_jetson_maps_from_nvidia_jetson_gpio():
    nano = load_profile("jetson-nano")
    assert [nano.resolve_pin(f"PIN{n}").line for n in (7, 11, 12, 13, 33, 40)] == [216, 50, 79, 14, 38, 78]
    assert nano.resolve_pin("PIN12").chip_label == "tegra-gpio" and nano.tpm_tcti is None
    orin = load_profile("jetson-orin-nano")
    assert [orin.resolve_pin(f"PIN{n}").line for n in (7, 11, 12, 13, 33, 40)] == [144, 112, 50, 122, 43, 51]
    assert orin.resolve_pin("PAC.06").line == 144 and orin.resolve_pin("PIN7").chip_label == "tegra234-gpio"
    assert orin.ort_providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_raw_chip_line_and_case():
    p = load_profile("rpi4")
    assert p.resolve_pin("gpiochip0:45").line == 45
    assert p.resolve_pin("gpio17").line == 17
    with pytest.raises(PinConfigError, match="unknown pin 'GPIO40'"):
        p.resolve_pin("GPIO40")


@pytest.mark.parametrize(
    "model,expected",
    [
        ("Raspberry Pi 4 Model B Rev 1.4", "rpi4"),
        ("Raspberry Pi 400 Rev 1.0", "rpi4"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", "rpi4"),
        ("Raspberry Pi 5 Model B Rev 1.0", "rpi5"),
        ("Raspberry Pi Zero 2 W Rev 1.0", "rpi-zero-2w"),
        ("NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
        ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "sim"),
        ("Pine64 RockPro64", "sim"),
    ],
)
def test_auto_detection(tmp_path, model, expected):
    f = tmp_path / "model"
    f.write_bytes(model.encode() + b"\0")  # the device tree string is NUL-terminated
    assert load_profile("auto", model_path=f).name == expected


def test_auto_without_device_tree_is_sim(tmp_path):
    assert load_profile("auto", model_path=tmp_path / "absent").name == "sim"


def test_detect_prefers_the_longest_match():
    profiles = [load_profile(n) for n in SHIPPED]
    assert detect_board("NVIDIA Jetson Orin Nano Developer Kit", profiles) == "jetson-orin-nano"
    assert detect_board("", profiles) is None


def test_search_paths_override_and_file_path(tmp_path):
    text = (REPO_DIR / "sim.yaml").read_text().replace("memory_budget_mb: 256", "memory_budget_mb: 999")
    (tmp_path / "sim.yaml").write_text(text)
    assert load_profile("sim", search_paths=[tmp_path]).memory_budget_mb == 999
    assert profile_dirs([tmp_path])[0] == tmp_path
    assert available_profiles(search_paths=[tmp_path])["sim"] == tmp_path / "sim.yaml"
    custom = tmp_path / "my-board.yaml"
    custom.write_text(text.replace("name: sim", "name: my-board"))
    assert load_profile(str(custom)).name == "my-board"


def test_env_search_path(tmp_path, monkeypatch):
    text = (REPO_DIR / "rpi4.yaml").read_text().replace("name: rpi4", "name: lab-pi")
    (tmp_path / "lab-pi.yaml").write_text(text)
    monkeypatch.setenv("KESTREL_BOARD_PROFILES", str(tmp_path))
    assert load_profile("lab-pi").name == "lab-pi"


def test_unknown_and_invalid_names():
    with pytest.raises(ConfigError, match="no board profile named 'beaglebone'") as ei:
        load_profile("beaglebone")
    assert "rpi4" in ei.value.hint
    with pytest.raises(ConfigError, match="invalid board name"):
        load_profile("Rpi4!")


def test_name_must_match_file(tmp_path):
    (tmp_path / "rpi9.yaml").write_text((REPO_DIR / "rpi4.yaml").read_text())
    with pytest.raises(ConfigError, match="declares name 'rpi4'"):
        load_profile("rpi9", search_paths=[tmp_path])


# ----------------------------------------------------------------- malformed profiles

BASE = """\
name: t
gpio:
  backend: gpiod
  chips:
    gpiochip0: pinctrl-x
  lines:
    GPIO1: 1
  header:
    PIN3: GPIO1
memory_budget_mb: 128
"""


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_profile(text, source="boards/t.yaml")
    return ei.value


def test_base_profile_is_valid():
    p = parse_profile(BASE, source="boards/t.yaml")
    assert p.resolve_pin("PIN3").line == 1 and p.tpm_tcti is None and p.ort_providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    "old,new,line,key",
    [
        ("backend: gpiod", "backend: wiringpi", 3, "gpio.backend"),
        ("    GPIO1: 1", "    GPIO1: -4", 7, "gpio.lines.GPIO1"),
        ("    GPIO1: 1", "    GPIO1: gpiochip9:4", 7, "gpio.lines.GPIO1"),
        ("    PIN3: GPIO1", "    PIN3: GPIO2", 9, "gpio.header.PIN3"),
        ("    PIN3: GPIO1", "    P3: GPIO1", 9, "gpio.header.P3"),
        ("memory_budget_mb: 128", "memory_budget_mb: lots", 10, "memory_budget_mb"),
        ("memory_budget_mb: 128", "memory_budgt_mb: 128", 10, "memory_budgt_mb"),
        ("name: t", "name: T T", 1, "name"),
        ("    gpiochip0: pinctrl-x", "    gpio chip: pinctrl-x", 5, "gpio.chips.gpio chip"),
    ],
)
def test_malformed_profile_names_file_line_and_key(old, new, line, key):
    e = _err(BASE.replace(old, new))
    assert (e.path, e.line, e.key) == ("boards/t.yaml", line, key)
    assert str(e).startswith(f"boards/t.yaml:{line}:") and f", key '{key}': " in str(e)


def test_missing_required_key():
    e = _err(BASE.replace("memory_budget_mb: 128\n", ""))
    assert (e.line, e.key) == (1, "memory_budget_mb") and "required" in str(e)


def test_yaml_syntax_error_has_line_and_column():
    e = _err(BASE.replace("  lines:", "  lines: [unclosed"))
    assert e.line is not None and e.column is not None and "not valid YAML" in str(e)


def test_duplicate_key_and_non_mapping():
    e = _err(BASE + "memory_budget_mb: 256\n")
    assert (e.line, e.key) == (11, "memory_budget_mb") and "duplicate" in str(e)
    assert "mapping" in str(_err("- just\n- a list\n"))


def test_malformed_file_on_disk_and_binary(tmp_path):
    (tmp_path / "bad.yaml").write_text(BASE.replace("name: t", "name: bad").replace("128", "x"))
    with pytest.raises(ConfigError, match=r"bad.yaml:10:\d+, key 'memory_budget_mb'"):
        load_profile("bad", search_paths=[tmp_path])
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile("bin", search_paths=[tmp_path])

"""Device config parsing (pure): the shipped example, every section, and errors with file, line and key."""

from __future__ import annotations

import textwrap

import pytest

from kestrel.daemon.config import GpioInput, MqttSensor, PeriodicSensor, SerialSensor, parse_device_config
from kestrel.daemon.main import load_config
from kestrel.errors import ConfigError

FULL = """
version: 1
name: porch
board: rpi5
sensors:
  door: {type: gpio, pin: PIN11, mode: edge, edge: falling, bias: pull_up, debounce_ms: 20, active_low: true}
  tank: {type: gpio, pin: 22, mode: level, poll_s: 0.5}
  gps: {type: serial, port: /dev/ttyAMA0, baud: 9600, parity: even, framing: line, format: nmea}
  meter: {type: serial, port: /dev/ttyUSB0, baud: 115200, framing: length_prefixed, length_bytes: 1, crc: crc16,
          max_frame: 200, format: bytes}
  weather: {type: mqtt, topic: "home/+/weather", payload: msgpack, max_payload: 4096, qos: 0}
  cpu: {type: periodic, every: 10, file: /sys/class/thermal/thermal_zone0/temp, scale: 0.001}
actuators:
  siren: {type: gpio, pin: GPIO27, initial: 0}
  alerts: {type: mqtt, topic: porch/alerts, retain: true}
  lcd: {type: serial, port: /dev/ttyS1, framing: none}
triggers:
  - name: door_open
    when: "door == 1 and cpu < 80"
    action: mqtt.publish
    args: {actuator: alerts, payload: "door opened at ${cpu} C"}
    cooldown: 30
schedules:
  - {name: heartbeat, every: 60, action: mqtt.publish, args: {actuator: alerts, payload: alive}}
  - {name: report, cron: "*/5 * * * *", action: send_email, args: {to: me@example.com, subject: report}}
smtp: {host: mail.example.com, port: 587, security: starttls, username: bot, password_file: /etc/k/smtp, from: a@b.c}
outbox: {retry_initial: 1, retry_max: 60, max_items: 10}
mqtt: {host: broker.lan, port: 8883, commands_topic: porch/cmd, results_topic: porch/result, username: porch,
       password_file: /etc/k/mqtt, tls: true, ca_file: /etc/k/ca.pem}
control: {group: kestrel}
ota: {drop_dir: /media/usb, mqtt_topic: porch/ota}
fetch: {max_bytes: 10000, timeout: 5}
limits: {event_queue: 100, action_queue: 10, action_workers: 2}
"""


def test_full_config_parses_into_typed_values():
    cfg = parse_device_config(FULL, source="full.yaml")
    door, tank, gps, meter, weather, cpu = cfg.sensors
    assert isinstance(door, GpioInput) and door.edge == "falling" and door.debounce_ms == 20 and door.active_low
    assert tank.pin == "22" and tank.mode == "level"
    assert isinstance(gps, SerialSensor) and gps.line.parity == "even" and gps.format == "nmea"
    assert meter.line.length_bytes == 1 and meter.line.crc == "crc16" and meter.line.max_frame == 200
    assert isinstance(weather, MqttSensor) and weather.payload == "msgpack" and weather.qos == 0
    assert isinstance(cpu, PeriodicSensor) and cpu.scale == 0.001
    t = cfg.triggers[0]
    assert t.when.names == {"door", "cpu"} and t.cooldown_s == 30
    assert t.args.render({"cpu": 41.5}) == {"actuator": "alerts", "payload": "door opened at 41.5 C"}
    assert cfg.schedules[1].cron is not None and cfg.schedules[0].every_s == 60
    assert cfg.smtp and cfg.smtp.security == "starttls" and cfg.smtp.sender == "a@b.c"
    assert cfg.mqtt and cfg.mqtt.commands_topic == "porch/cmd" and cfg.mqtt.tls and cfg.mqtt.username == "porch"
    assert cfg.control.group == "kestrel" and cfg.ota.drop_dir == "/media/usb" and cfg.limits.action_workers == 2


def test_embedded_default_config_loads():
    cfg = load_config(None)
    assert cfg.board == "sim" and cfg.sensor("button") and cfg.actuator("lamp") and cfg.smtp


@pytest.mark.parametrize(
    "text, where, key, words",
    [
        ("version: 2\n", ":1:10", "version", "unsupported config version"),
        ("sensors:\n  d: {type: gpio}\n", ":2:6", "sensors.d.pin", "is required"),
        ("sensors:\n  d:\n    type: gpio\n    pin: 4\n    bias: up\n", ":5:11", "sensors.d.bias", "'up' is not one of"),
        ("sensors:\n  d: {type: laser}\n", ":2:13", "sensors.d.type", "not one of"),
        ("sensors:\n  d: {type: gpio, pin: 4, colour: red}\n", ":2:27", "sensors.d.colour", "unknown key"),
        ("sensors:\n  d: {type: serial, port: /dev/x, baud: fast}\n", ":2:41", "sensors.d.baud", "expected an integer"),
        (
            "sensors:\n  d: {type: serial, port: /dev/x, framing: length_prefixed, length_bytes: 1, max_frame: 300}\n",
            ":2:",
            "sensors.d.max_frame",
            "above the maximum 255",
        ),
        ("sensors:\n  d: {type: mqtt, topic: t}\n", ":", "sensors.d", "needs an 'mqtt' broker section"),
        ("triggers:\n  - when: 'x >'\n    action: gpio.write\n", ":2:11", "triggers[0].when", "ends too early"),
        (
            "sensors:\n  x: {type: gpio, pin: 4}\ntriggers:\n  - when: 'y == 1'\n    action: gpio.write\n",
            ":4:11",
            "triggers[0].when",
            "unknown sensor 'y'",
        ),
        ("triggers:\n  - when: '1'\n    action: launch_missiles\n", ":3:13", "triggers[0].action", "not one of"),
        (
            "actuators:\n  a: {type: mqtt, topic: t}\nmqtt: {host: h}\ntriggers:\n  - when: '1'\n"
            "    action: gpio.write\n    args: {actuator: a, value: 1}\n",
            ":7:11",
            "triggers[0].args.actuator",
            "needs a gpio actuator",
        ),
        ("schedules:\n  - {every: 5, cron: '* * * * *', action: gpio.write}\n", ":2:5", "schedules[0]", "exactly one"),
        ("schedules:\n  - {cron: '*/0 * * * *', action: gpio.write}\n", ":2:12", "schedules[0].cron", "bad step"),
        ("smtp: {host: h, username: u}\n", ":1:", "smtp.password_file", "needs a password_file"),
        ("mqtt: {host: h, username: u}\n", ":1:", "mqtt.password_file", "needs a password_file"),
        ("mqtt: {host: h, ca_file: /x}\n", ":1:", "mqtt.ca_file", "needs tls: true"),
        ("triggers:\n  - when: '1'\n    action: send_email\n", ":2:5", "triggers[0]", "needs an 'smtp' section"),
        ("sensors:\n  d: {type: gpio, pin: 4}\n  d: {type: gpio, pin: 5}\n", ":3:3", "sensors.d", "duplicate key"),
        ("sensors: [a, b]\n", ":1:10", "sensors", "expected a mapping"),
        ("sensors:\n  - bad\n  x: y\n", ":3:3", None, "not valid YAML"),
        ("", "", None, "empty"),
        ("!!python/object:os.system {}\n", ":1:1", None, "is not allowed"),
        ("sensors:\n  d: !!binary aGVsbG8=\n", ":2:6", "sensors.d", "!!binary is not allowed"),
        (
            "triggers:\n  - when: '1'\n    action: schedule_event\n    args: {start: 2026-05-01}\n",
            ":4:19",
            "triggers[0].args.start",
            "quote dates",
        ),
    ],
)
def test_errors_name_file_line_and_key(text, where, key, words):
    with pytest.raises(ConfigError) as err:
        parse_device_config(text, source="dev.yaml")
    msg = str(err.value)
    assert f"dev.yaml{where}" in msg and words in msg, msg
    if key:
        assert err.value.key == key and f"key '{key}'" in msg


def test_load_config_refuses_missing_binary_and_huge_files(tmp_path):
    from kestrel.errors import DataError, TransportError

    with pytest.raises(TransportError):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"version: 1\nname: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.yaml")
    (tmp_path / "big.yaml").write_bytes(b"#" * (2 << 20))
    with pytest.raises(DataError, match="larger than"):
        load_config(tmp_path / "big.yaml")


def test_yaml_one_one_booleans_are_reported_not_misread():
    text = textwrap.dedent("""
        sensors:
          b: {type: gpio, pin: 4}
        triggers:
          - name: on
            when: "b == 1"
            action: gpio.write
    """)
    with pytest.raises(ConfigError, match="expected a non-empty string, got bool True"):
        parse_device_config(text, source="x.yaml")


def test_an_empty_section_means_the_dataclass_defaults():
    """Each default is stated once (the dataclass): a section given with no keys parses to exactly it."""
    from kestrel.daemon import config as c

    cfg = parse_device_config(
        textwrap.dedent("""
        version: 1
        sensors:
          door: {type: gpio, pin: 17}
          gps: {type: serial, port: /dev/ttyS0}
          weather: {type: mqtt, topic: t}
          cpu: {type: periodic, every: 10, file: /x}
        actuators:
          siren: {type: gpio, pin: 27}
          alerts: {type: mqtt, topic: a}
        triggers: [{when: "door == 1", action: gpio.write, args: {actuator: siren, value: 1}}]
        schedules: [{every: 5, action: gpio.write, args: {actuator: siren, value: 0}}]
        smtp: {host: h}
        mqtt: {host: b}
        outbox: {}
        control: {}
        ota: {}
        fetch: {}
        limits: {}
        audit: {}
        ui: {}
    """),
        source="defaults.yaml",
    )
    assert cfg.name == c.DeviceConfig.name and cfg.board is None
    assert cfg.sensor("door") == c.GpioInput("door", "17")
    assert cfg.sensor("gps") == c.SerialSensor("gps", c.SerialLine("/dev/ttyS0"))
    assert cfg.sensor("weather") == c.MqttSensor("weather", "t")
    assert cfg.sensor("cpu") == c.PeriodicSensor("cpu", 10.0, file="/x")
    assert cfg.actuator("siren") == c.GpioOutput("siren", "27")
    assert cfg.actuator("alerts") == c.MqttActuator("alerts", "a")
    t, s = cfg.triggers[0], cfg.schedules[0]
    assert (t.cooldown_s, t.fire) == (c.Trigger.cooldown_s, c.Trigger.fire)
    assert s.cron is None and s.every_s == 5.0
    assert cfg.smtp == c.SmtpConfig("h") and cfg.mqtt == c.MqttConfig("b")
    assert (cfg.outbox, cfg.control, cfg.ota, cfg.fetch, cfg.limits, cfg.audit, cfg.ui) == (
        c.OutboxConfig(),
        c.ControlConfig(),
        c.OtaConfig(),
        c.FetchConfig(),
        c.LimitsConfig(),
        c.AuditConfig(),
        c.UiConfig(),
    )


def test_aliases_are_refused_with_their_position():
    """The device config is read by the project's one YAML reader: no alias expansion ("billion laughs")."""
    text = "version: 1\nname: &n porch\nboard: *n\n"
    with pytest.raises(ConfigError, match="aliases are not allowed") as info:
        parse_device_config(text, source="device.yaml")
    assert (info.value.path, info.value.line, info.value.column) == ("device.yaml", 3, 8)

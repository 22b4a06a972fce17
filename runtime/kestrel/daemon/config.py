"""Device configuration (docs/device-config.md): YAML text in, a frozen DeviceConfig out.

Pure: no file, device or network is touched. Every error is a ConfigError that
names the file, the line and the dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._internal.yamlnode import Fields, Node, load
from ..errors import ConfigError, KestrelError
from .cron import CronSpec, parse_cron
from .expr import Expression, compile_expression
from .template import Template

if TYPE_CHECKING:
    from ..io.framing import CrcName

__all__ = [
    "DeviceConfig",
    "GpioInput",
    "SerialSensor",
    "MqttSensor",
    "PeriodicSensor",
    "GpioOutput",
    "MqttActuator",
    "SerialActuator",
    "Trigger",
    "Schedule",
    "SmtpConfig",
    "OutboxConfig",
    "MqttConfig",
    "ControlConfig",
    "OtaConfig",
    "FetchConfig",
    "LimitsConfig",
    "AuditConfig",
    "SerialLine",
    "UiConfig",
    "parse_device_config",
    "BUILTIN_ACTIONS",
]

BUILTIN_ACTIONS = (
    "send_email",
    "schedule_event",
    "fetch_data",
    "gpio.write",
    "mqtt.publish",
    "serial.write",
    "agent.send",
)
PARITIES = ("none", "even", "odd")
CONFIG_VERSION = 1  # the `version:` this parser reads
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True)
class SerialLine:
    port: str
    baud: int = 9600
    parity: str = "none"
    framing: str = "line"  # line | length_prefixed
    max_frame: int = 1024
    length_bytes: int = 2  # for length_prefixed: big-endian length header size (1 or 2)
    crc: CrcName | None = None  # for length_prefixed: no trailer, or a CRC-16 / CRC-32 one


@dataclass(frozen=True)
class GpioInput:
    name: str
    pin: str
    mode: str = "edge"  # edge | level
    edge: str = "both"  # rising | falling | both
    bias: str = "as_is"  # as_is | pull_up | pull_down | disabled
    debounce_ms: float = 0.0
    poll_s: float = 1.0  # level mode sampling period
    active_low: bool = False
    kind: str = "gpio"


@dataclass(frozen=True)
class SerialSensor:
    name: str
    line: SerialLine
    format: str = "text"  # text | nmea | json | bytes
    kind: str = "serial"


@dataclass(frozen=True)
class MqttSensor:
    name: str
    topic: str
    payload: str = "json"  # json | msgpack | text
    max_payload: int = 65536
    qos: int = 1
    kind: str = "mqtt"


@dataclass(frozen=True)
class PeriodicSensor:
    name: str
    every_s: float
    file: str | None = None  # read a number from a file (e.g. /sys/class/thermal/...)
    pin: str | None = None  # or sample a GPIO input level
    scale: float = 1.0
    kind: str = "periodic"


Sensor = GpioInput | SerialSensor | MqttSensor | PeriodicSensor


@dataclass(frozen=True)
class GpioOutput:
    name: str
    pin: str
    initial: int = 0
    active_low: bool = False
    kind: str = "gpio"


@dataclass(frozen=True)
class MqttActuator:
    name: str
    topic: str
    qos: int = 1
    retain: bool = False
    kind: str = "mqtt"


@dataclass(frozen=True)
class SerialActuator:
    name: str
    line: SerialLine
    kind: str = "serial"


Actuator = GpioOutput | MqttActuator | SerialActuator


@dataclass(frozen=True)
class Trigger:
    name: str
    when: Expression
    action: str
    args: Template
    cooldown_s: float = 0.0
    fire: str = "rising"  # rising: when the condition becomes true; always: on every matching event


@dataclass(frozen=True)
class Schedule:
    name: str
    action: str
    args: Template
    every_s: float | None = None
    cron: CronSpec | None = None


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username: str | None = None
    password_file: str | None = None
    sender: str = "kestrel@localhost"
    timeout_s: float = 10.0


@dataclass(frozen=True)
class OutboxConfig:
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    max_items: int = 1000


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = 1883
    keepalive_s: int = 30
    commands_topic: str | None = None
    results_topic: str | None = None
    max_payload: int = 65536
    username: str | None = None
    password_file: str | None = None  # never a password inline
    tls: bool = False
    ca_file: str | None = None  # default: the system's trust store
    session_expiry_s: int = 7 * 86400  # the broker keeps an offline agent's session (and its queued messages)


@dataclass(frozen=True)
class ControlConfig:
    group: str | None = None  # a group name or numeric gid whose members may use the socket


@dataclass(frozen=True)
class OtaConfig:
    drop_dir: str | None = None  # relative paths are under the state directory
    mqtt_topic: str | None = None
    poll_s: float = 2.0
    max_bundle: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class FetchConfig:
    max_bytes: int = 1024 * 1024
    timeout_s: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    event_queue: int = 1024
    action_queue: int = 256
    action_workers: int = 4


@dataclass(frozen=True)
class AuditConfig:
    decisions: str = "batched"  # batched: queued in the ledger's group commit before the action runs; strict:
    #                              durable on flash before the action runs
    commit_delay_ms: float = 5.0  # the ledger's group commit waits at most this long for more records
    checkpoint_interval_ms: float = 50.0  # at most one signed checkpoint per interval (TPM load, flash)


@dataclass(frozen=True)
class UiConfig:
    """The local web UI (docs/ui.md): on only when the config has a ``ui:`` section."""

    host: str = "127.0.0.1"
    port: int = 8340  # 0: any free port (the address is in `kestrel status`)
    session_s: float = 12 * 3600.0  # a sign-in lasts this long at most (and never beyond its token)


@dataclass(frozen=True)
class DeviceConfig:
    source: str
    name: str = "kestrel"
    board: str | None = None
    sensors: tuple[Sensor, ...] = ()
    actuators: tuple[Actuator, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    smtp: SmtpConfig | None = None
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig | None = None
    control: ControlConfig = field(default_factory=ControlConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    sync: Any = None  # kestrel.sync.config.SyncConfig; used only with an mqtt section
    models: tuple[Any, ...] = ()  # kestrel.daemon.modelsensors.ModelSensor: model outputs as sensor values
    ui: UiConfig | None = None  # the local web UI; None: off (the default)

    def sensor(self, name: str) -> Sensor | None:
        return next((s for s in self.sensors if s.name == name), None)

    def actuator(self, name: str) -> Actuator | None:
        return next((a for a in self.actuators if a.name == name), None)


# -- parsing ---------------------------------------------------------------------------------


def _name(node: Node, name: str) -> str:
    if not name or not set(name) <= _NAME_OK:
        raise node.error(f"name {name!r} must use letters, digits and '_' only")
    return name


_CRCS: dict[str, CrcName | None] = {"none": None, "crc16": "crc16", "crc32": "crc32"}


def _serial_line(f: Fields) -> SerialLine:
    framing = f.get("framing", Node.as_str, SerialLine.framing, choices=("line", "length_prefixed", "none"))
    length_bytes = f.get("length_bytes", Node.as_int, SerialLine.length_bytes, min=1, max=2)
    limit = (1 << (8 * length_bytes)) - 1 if framing == "length_prefixed" else 1 << 20
    default_crc: str = SerialLine.crc or "none"
    crc = f.get("crc", Node.as_str, default_crc, choices=tuple(_CRCS))
    return SerialLine(
        port=f.get("port", Node.as_str),
        baud=f.get("baud", Node.as_int, SerialLine.baud, min=50, max=4_000_000),
        parity=f.get("parity", Node.as_str, SerialLine.parity, choices=PARITIES),
        framing=framing,
        max_frame=f.get("max_frame", Node.as_int, min(SerialLine.max_frame, limit), min=8, max=limit),
        length_bytes=length_bytes,
        crc=_CRCS[crc],
    )


_SERIAL_KEYS = {"type", "port", "baud", "parity", "framing", "max_frame", "length_bytes", "crc"}


def _sensor(name: str, node: Node) -> Sensor:
    kind = Fields(node, set(node.mapping())).get("type", Node.as_str, choices=("gpio", "serial", "mqtt", "periodic"))
    if kind == "gpio":
        f = Fields(node, {"type", "pin", "mode", "edge", "bias", "debounce_ms", "poll_s", "active_low"})
        return GpioInput(
            name,
            f.get("pin", _pin),
            mode=f.get("mode", Node.as_str, GpioInput.mode, choices=("edge", "level")),
            edge=f.get("edge", Node.as_str, GpioInput.edge, choices=("rising", "falling", "both")),
            bias=f.get("bias", Node.as_str, GpioInput.bias, choices=("as_is", "pull_up", "pull_down", "disabled")),
            debounce_ms=f.get("debounce_ms", Node.as_float, GpioInput.debounce_ms, min=0, max=10_000),
            poll_s=f.get("poll_s", Node.as_float, GpioInput.poll_s, min=0.001, max=86_400),
            active_low=f.get("active_low", Node.as_bool, GpioInput.active_low),
        )
    if kind == "serial":
        f = Fields(node, _SERIAL_KEYS | {"format"})
        line = _serial_line(f)
        if line.framing == "none":
            raise f.node_of("framing").error("a serial sensor needs framing 'line' or 'length_prefixed'")
        return SerialSensor(
            name,
            line,
            format=f.get("format", Node.as_str, SerialSensor.format, choices=("text", "nmea", "json", "bytes")),
        )
    if kind == "mqtt":
        f = Fields(node, {"type", "topic", "payload", "max_payload", "qos"})
        return MqttSensor(
            name,
            f.get("topic", Node.as_str),
            payload=f.get("payload", Node.as_str, MqttSensor.payload, choices=("json", "msgpack", "text")),
            max_payload=f.get("max_payload", Node.as_int, MqttSensor.max_payload, min=1, max=1 << 24),
            qos=f.get("qos", Node.as_int, MqttSensor.qos, min=0, max=2),
        )
    f = Fields(node, {"type", "every", "file", "pin", "scale"})
    if f.has("file") == f.has("pin"):
        raise node.error("a periodic sensor reads exactly one of 'file' or 'pin'")
    return PeriodicSensor(
        name,
        f.get("every", Node.as_float, min=0.01, max=86_400 * 31),
        file=f.get("file", Node.as_str, PeriodicSensor.file),
        pin=f.get("pin", _pin, PeriodicSensor.pin),
        scale=f.get("scale", Node.as_float, PeriodicSensor.scale),
    )


def _pin(node: Node) -> str:
    v = node.value()
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return node.as_str()


def _actuator(name: str, node: Node) -> Actuator:
    kind = Fields(node, set(node.mapping())).get("type", Node.as_str, choices=("gpio", "mqtt", "serial"))
    if kind == "gpio":
        f = Fields(node, {"type", "pin", "initial", "active_low"})
        return GpioOutput(
            name,
            f.get("pin", _pin),
            initial=f.get("initial", Node.as_int, GpioOutput.initial, min=0, max=1),
            active_low=f.get("active_low", Node.as_bool, GpioOutput.active_low),
        )
    if kind == "mqtt":
        f = Fields(node, {"type", "topic", "qos", "retain"})
        return MqttActuator(
            name,
            f.get("topic", Node.as_str),
            qos=f.get("qos", Node.as_int, MqttActuator.qos, min=0, max=2),
            retain=f.get("retain", Node.as_bool, MqttActuator.retain),
        )
    f = Fields(node, _SERIAL_KEYS)
    return SerialActuator(name, _serial_line(f))


def _action(f: Fields) -> tuple[str, Template]:
    action = f.get("action", Node.as_str, choices=BUILTIN_ACTIONS)
    args_node = f.node_of("args")
    if not args_node.is_null and not isinstance(args_node.value(), dict):
        raise args_node.error("args must be a mapping of argument names to values")
    try:
        return action, Template.of(args_node.value() or {})
    except KestrelError as exc:
        raise args_node.error(f"bad ${{...}} template: {exc.message}") from None


def _trigger(node: Node, index: int) -> Trigger:
    f = Fields(node, {"name", "when", "action", "args", "cooldown", "fire"})
    when_node = f.node_of("when")
    try:
        when = compile_expression(f.get("when", Node.as_str))
    except KestrelError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise when_node.error(exc.message) from None
    action, args = _action(f)
    return Trigger(
        name=f.get("name", Node.as_str, f"trigger{index}"),
        when=when,
        action=action,
        args=args,
        cooldown_s=f.get("cooldown", Node.as_float, Trigger.cooldown_s, min=0, max=86_400),
        fire=f.get("fire", Node.as_str, Trigger.fire, choices=("rising", "always")),
    )


def _schedule(node: Node, index: int) -> Schedule:
    f = Fields(node, {"name", "every", "cron", "action", "args"})
    if f.has("every") == f.has("cron"):
        raise node.error("a schedule has exactly one of 'every' (seconds) or 'cron' (\"*/5 * * * *\")")
    cron = None
    if f.has("cron"):
        try:
            cron = parse_cron(f.get("cron", Node.as_str))
        except KestrelError as exc:
            raise f.node_of("cron").error(exc.message, hint=exc.hint) from None
    action, args = _action(f)
    return Schedule(
        name=f.get("name", Node.as_str, f"schedule{index}"),
        action=action,
        args=args,
        every_s=f.get("every", Node.as_float, Schedule.every_s, min=0.01, max=86_400 * 366),
        cron=cron,
    )


def _section(root: Fields, key: str, keys: set[str]) -> Fields | None:
    return Fields(root.entries[key], keys) if root.has(key) else None


def _named(root: Fields, key: str, build: Any) -> tuple[Any, ...]:
    out = []
    for name, node in root.node_of(key).items():
        out.append(build(_name(node, name), node))
    return tuple(out)


_TOP = {
    "version",
    "name",
    "board",
    "sensors",
    "actuators",
    "triggers",
    "schedules",
    "smtp",
    "outbox",
    "mqtt",
    "control",
    "ota",
    "fetch",
    "limits",
    "audit",
    "sync",
    "models",
    "ui",
}


def parse_device_config(text: str, *, source: str = "<config>") -> DeviceConfig:
    """Parse device-config YAML; raise ConfigError naming ``source``, line and key."""
    root_node = load(text, source=source)
    if root_node.is_null:
        raise ConfigError("the device config is empty", path=source, hint="see docs/device-config.md")
    root = Fields(root_node, _TOP)
    version = root.get("version", Node.as_int, CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise root.node_of("version").error(
            f"unsupported config version {version}; this Kestrel reads {CONFIG_VERSION}"
        )
    sensors = _named(root, "sensors", _sensor)
    actuators = _named(root, "actuators", _actuator)
    triggers = tuple(_trigger(n, i) for i, n in enumerate(root.node_of("triggers").sequence()))
    schedules = tuple(_schedule(n, i) for i, n in enumerate(root.node_of("schedules").sequence()))

    smtp = None
    if f := _section(root, "smtp", {"host", "port", "security", "username", "password_file", "from", "timeout"}):
        if f.has("username") and not f.has("password_file"):
            raise f.node_of("password_file").error(
                "a username needs a password_file", hint="passwords never go in the config itself"
            )
        smtp = SmtpConfig(
            host=f.get("host", Node.as_str),
            port=f.get("port", Node.as_int, SmtpConfig.port, min=1, max=65535),
            security=f.get("security", Node.as_str, SmtpConfig.security, choices=("none", "starttls", "tls")),
            username=f.get("username", Node.as_str, SmtpConfig.username),
            password_file=f.get("password_file", Node.as_str, SmtpConfig.password_file),
            sender=f.get("from", Node.as_str, SmtpConfig.sender),
            timeout_s=f.get("timeout", Node.as_float, SmtpConfig.timeout_s, min=0.1, max=600),
        )
    outbox = OutboxConfig()
    if f := _section(root, "outbox", {"retry_initial", "retry_max", "max_items"}):
        outbox = OutboxConfig(
            f.get("retry_initial", Node.as_float, OutboxConfig.retry_initial_s, min=0.01, max=86_400),
            f.get("retry_max", Node.as_float, OutboxConfig.retry_max_s, min=0.01, max=86_400 * 7),
            f.get("max_items", Node.as_int, OutboxConfig.max_items, min=1, max=1_000_000),
        )
    mqtt = None
    if f := _section(
        root,
        "mqtt",
        {
            "host",
            "port",
            "keepalive",
            "commands_topic",
            "results_topic",
            "max_payload",
            "username",
            "password_file",
            "tls",
            "ca_file",
            "session_expiry",
        },
    ):
        if f.has("username") and not f.has("password_file"):
            raise f.node_of("password_file").error(
                "a username needs a password_file", hint="passwords never go in the config itself"
            )
        if f.has("ca_file") and not f.get("tls", Node.as_bool, MqttConfig.tls):
            raise f.node_of("ca_file").error("ca_file needs tls: true")
        mqtt = MqttConfig(
            host=f.get("host", Node.as_str),
            port=f.get("port", Node.as_int, MqttConfig.port, min=1, max=65535),
            keepalive_s=f.get("keepalive", Node.as_int, MqttConfig.keepalive_s, min=5, max=3600),
            commands_topic=f.get("commands_topic", Node.as_str, MqttConfig.commands_topic),
            results_topic=f.get("results_topic", Node.as_str, MqttConfig.results_topic),
            max_payload=f.get("max_payload", Node.as_int, MqttConfig.max_payload, min=64, max=1 << 24),
            username=f.get("username", Node.as_str, MqttConfig.username),
            password_file=f.get("password_file", Node.as_str, MqttConfig.password_file),
            tls=f.get("tls", Node.as_bool, MqttConfig.tls),
            ca_file=f.get("ca_file", Node.as_str, MqttConfig.ca_file),
            session_expiry_s=f.get("session_expiry", Node.as_int, MqttConfig.session_expiry_s, min=0, max=0xFFFFFFFF),
        )
    control = ControlConfig()
    if f := _section(root, "control", {"group"}):
        control = ControlConfig(group=f.get("group", _pin, ControlConfig.group))
    ota = OtaConfig()
    if f := _section(root, "ota", {"drop_dir", "mqtt_topic", "poll", "max_bundle"}):
        ota = OtaConfig(
            f.get("drop_dir", Node.as_str, OtaConfig.drop_dir),
            f.get("mqtt_topic", Node.as_str, OtaConfig.mqtt_topic),
            f.get("poll", Node.as_float, OtaConfig.poll_s, min=0.05, max=3600),
            f.get("max_bundle", Node.as_int, OtaConfig.max_bundle, min=1024, max=1 << 30),
        )
    fetch = FetchConfig()
    if f := _section(root, "fetch", {"max_bytes", "timeout"}):
        fetch = FetchConfig(
            f.get("max_bytes", Node.as_int, FetchConfig.max_bytes, min=1, max=1 << 30),
            f.get("timeout", Node.as_float, FetchConfig.timeout_s, min=0.1, max=600),
        )
    limits = LimitsConfig()
    if f := _section(root, "limits", {"event_queue", "action_queue", "action_workers"}):
        limits = LimitsConfig(
            f.get("event_queue", Node.as_int, LimitsConfig.event_queue, min=1, max=1_000_000),
            f.get("action_queue", Node.as_int, LimitsConfig.action_queue, min=1, max=1_000_000),
            f.get("action_workers", Node.as_int, LimitsConfig.action_workers, min=1, max=64),
        )

    audit = AuditConfig()
    if f := _section(root, "audit", {"decisions", "commit_delay_ms", "checkpoint_interval_ms"}):
        audit = AuditConfig(
            f.get("decisions", Node.as_str, AuditConfig.decisions, choices=("batched", "strict")),
            f.get("commit_delay_ms", Node.as_float, AuditConfig.commit_delay_ms, min=0, max=1000),
            f.get("checkpoint_interval_ms", Node.as_float, AuditConfig.checkpoint_interval_ms, min=1, max=600_000),
        )

    sync = _sync_section(root, source)
    models: tuple[Any, ...] = ()
    if root.has("models") and not root.node_of("models").is_null:
        from .modelsensors import parse_models

        models = parse_models(root.node_of("models"), names_ok=_name)
    cfg = DeviceConfig(
        source=source,
        name=root.get("name", Node.as_str, DeviceConfig.name),
        board=root.get("board", Node.as_str, DeviceConfig.board),
        sensors=sensors,
        actuators=actuators,
        triggers=triggers,
        schedules=schedules,
        smtp=smtp,
        outbox=outbox,
        mqtt=mqtt,
        control=control,
        ota=ota,
        fetch=fetch,
        limits=limits,
        audit=audit,
        sync=sync,
        models=models,
        ui=_ui_section(root),
    )
    _cross_check(cfg, root)
    return cfg


def _ui_section(root: Fields) -> UiConfig | None:
    """``ui: {enabled, listen: "HOST:PORT", session_ttl}``; absent (or ``enabled: false``): no UI."""
    f = _section(root, "ui", {"enabled", "listen", "session_ttl"})
    if f is None or not f.get("enabled", Node.as_bool, True):
        return None
    host, port = UiConfig.host, UiConfig.port
    if f.has("listen"):
        node = f.node_of("listen")
        text = node.as_str()
        h, sep, p = text.rpartition(":")
        h = h[1:-1] if h.startswith("[") and h.endswith("]") else h
        if not sep or not h or not p.isdigit() or int(p) > 65535 or any(c in h for c in "/ []"):
            raise node.error(f"listen must be HOST:PORT (e.g. 127.0.0.1:8340 or [::1]:8340), not {text!r}")
        host, port = h, int(p)
    return UiConfig(host, port, f.get("session_ttl", Node.as_float, UiConfig.session_s, min=60, max=30 * 86400))


def _sync_section(root: Fields, source: str) -> Any:
    """The ``sync:`` mapping, parsed by kestrel.sync.config (errors carry the section's line)."""
    from ..sync.config import parse_sync_config

    node = root.node_of("sync") if root.has("sync") else None
    raw = node.value() if node is not None and not node.is_null else None
    try:
        return parse_sync_config(raw, source=source)
    except ConfigError as exc:  # add the section's line to the sync parser's "file, key: what"
        assert node is not None
        what = exc.message.split(": ", 1)[-1] if exc.key else exc.message
        raise ConfigError(
            what, path=source, line=node.line, column=node.column, key=exc.key or "sync", hint=exc.hint
        ) from None


_ACTUATOR_ACTION = {"gpio.write": "gpio", "mqtt.publish": "mqtt", "serial.write": "serial"}


def _cross_check(cfg: DeviceConfig, root: Fields) -> None:
    names = [s.name for s in cfg.sensors]
    for m in cfg.models:  # a model sensor samples real sensors; triggers read it like one
        node = root.node_of("models").mapping()[m.name]
        if m.name in names:
            raise node.error(f"model sensor {m.name!r} has the name of a sensor", key=f"models.{m.name}")
        if unknown := sorted(m.reads - set(names)):
            raise (
                Fields(node, set(node.mapping()))
                .node_of("inputs")
                .error(f"unknown sensor {unknown[0]!r}", hint=f"sensors defined: {', '.join(names) or 'none'}")
            )
    names += [m.name for m in cfg.models]
    for s in cfg.sensors:
        if isinstance(s, MqttSensor) and cfg.mqtt is None:
            raise root.node_of("sensors").error(
                f"sensor {s.name!r} needs an 'mqtt' broker section", key=f"sensors.{s.name}"
            )
    for a in cfg.actuators:
        if isinstance(a, MqttActuator) and cfg.mqtt is None:
            raise root.node_of("actuators").error(
                f"actuator {a.name!r} needs an 'mqtt' broker section", key=f"actuators.{a.name}"
            )
    sources: tuple[tuple[str, tuple[Trigger | Schedule, ...]], ...] = (
        ("triggers", cfg.triggers),
        ("schedules", cfg.schedules),
    )
    for key, items in sources:
        for i, item in enumerate(items):
            node = root.node_of(key).sequence()[i]
            if isinstance(item, Trigger):
                unknown = sorted(n for n in item.when.names if n not in names)
                if unknown:
                    raise (
                        Fields(node, set(node.mapping()))
                        .node_of("when")
                        .error(f"unknown sensor {unknown[0]!r}", hint=f"sensors defined: {', '.join(names) or 'none'}")
                    )
            want = _ACTUATOR_ACTION.get(item.action)
            target = item.args.literal.get("actuator") if isinstance(item.args.literal, dict) else None
            if want and target is not None:
                target_name = target.literal
                act = cfg.actuator(target_name) if isinstance(target_name, str) else None
                if act is None or act.kind != want:
                    raise (
                        Fields(node, set(node.mapping()))
                        .node_of("args")
                        .error(
                            f"{item.action} needs a {want} actuator; {target_name!r} is not one",
                            key=f"{node.key}.args.actuator",
                        )
                    )
            if item.action == "send_email" and cfg.smtp is None:
                raise node.error("send_email needs an 'smtp' section (the relay to send through)")

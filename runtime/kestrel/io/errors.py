"""Errors of the hardware I/O layer (GPIO, serial, MQTT, board profiles)."""

from __future__ import annotations

from ..errors import ConfigError, DataError, TransportError

__all__ = ["GpioError", "PinConfigError", "SerialError", "MqttError", "PayloadTooLarge"]


class GpioError(TransportError):
    """A GPIO chip or line could not be opened or used."""


class PinConfigError(ConfigError):
    """A pin name, option or line request is invalid (unknown name, line busy, bad bias)."""


class SerialError(TransportError):
    """A serial device could not be opened, read or written."""


class MqttError(TransportError):
    """The broker refused or could not take a request (offline QoS0, queue full, bad PUBACK)."""

    def __init__(self, message: str, *, reason: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class PayloadTooLarge(DataError):
    """An MQTT payload or serial frame is larger than the configured limit."""

"""The agent daemon behind ``kestrel run``: device config, triggers, actions, control socket, systemd.

Pure cores: :mod:`.config` (device config YAML), :mod:`.expr` (trigger expressions, no eval),
:mod:`.cron`, :mod:`.triggers`, :mod:`.decode`, :mod:`.protocol` (control wire format).
Shells: :mod:`.runtime` (:class:`~kestrel.daemon.runtime.Daemon`, one asyncio loop),
:mod:`.hardware`, :mod:`.pipeline`, :mod:`.actions`, :mod:`.outbox`, :mod:`.calendar`,
:mod:`.fetch`, :mod:`.control`, :mod:`.notify`, :mod:`.schedules`, :mod:`.main`.
Formats: docs/device-config.md, docs/control-protocol.md. Importing this package imports nothing.
"""

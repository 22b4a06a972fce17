"""Hardware I/O: GPIO pin factories, serial ports, the MQTT bridge and board profiles.

Import the sub-modules you need (``kestrel.io.gpio``, ``kestrel.io.serial``,
``kestrel.io.mqtt``, ``kestrel.io.boards``); this package itself imports nothing
heavy. The API is summarised in docs/architecture.md (Runtime) and specified in
docs/io.md and docs/board-profiles.md.
"""

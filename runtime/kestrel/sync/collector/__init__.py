"""The collector: verification core, storage interface, SQLite backend, MQTT service (docs/collector.md)."""

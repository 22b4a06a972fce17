"""Ledger sync over MQTT, the verifying collector, and signed agent-to-agent messages.

Pure cores: ``wire`` (topics, batch and resend payloads), ``limits`` (bandwidth cap, retention
warnings), ``config`` (the ``sync:`` section), ``peers.envelope`` / ``peers.keyagree`` (peer
messages), ``collector.core`` (verification over a ``collector.store.CollectorStore``).
Shells: ``sync.LedgerSync`` (agent side, over ``kestrel.io.mqtt.MqttBridge``), ``state`` (offset
and status files), ``peers.trust`` / ``peers.messenger``, ``collector.sqlite`` /
``collector.service``. Formats: docs/sync-protocol.md, docs/collector.md, docs/peer-messages.md.
Nothing heavy is imported here.
"""

"""Agent-to-agent messages: envelope (pure), key agreement, trust list, messenger (docs/peer-messages.md)."""

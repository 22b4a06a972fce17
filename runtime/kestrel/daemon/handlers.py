"""The control-request handlers: what the control socket (and the web UI) can ask of a running daemon.

:class:`ControlHandlers` implements :class:`kestrel.daemon.control.ControlTarget` over the
parts that :class:`kestrel.daemon.runtime.Daemon` (the composition root) builds; the daemon
mixes it in, so ``daemon.control_status()`` and friends are the daemon's own methods and the
control server and the UI are handed the daemon itself. Request parsing, peer checks and
replies live in :mod:`kestrel.daemon.control`; this module only answers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .triggers import Proposal

if TYPE_CHECKING:
    from ..ledger import Ledger, Record
    from .admin import OtaService
    from .ask import AskHost
    from .config import DeviceConfig
    from .control import ControlServer
    from .effects import EffectTracker
    from .hardware import Hardware
    from .links import Links
    from .outbox import Outbox
    from .pipeline import Pipeline

__all__ = ["ControlHandlers", "FOLLOW_BATCH", "FOLLOW_POLL_S"]

FOLLOW_BATCH = 256  # records read from the ledger per step of `follow`
FOLLOW_POLL_S = 0.25  # `follow` looks for new records at least this often (appends wake it sooner)


class ControlHandlers:
    """The :class:`~kestrel.daemon.control.ControlTarget` methods, mixed into the daemon."""

    # What the handlers read of the daemon they are mixed into (set by Daemon.__init__).
    config: DeviceConfig
    ledger: Ledger
    agent_id: str
    board: str
    factory: Any  # the pin factory; the sim board's drives its chips
    policy: Any  # the PolicyEngine (or what a test passed)
    hardware: Hardware | None
    values: dict[str, Any]
    models: Any  # modelsensors.ModelFeeds while the config has models
    outbox: Outbox
    indoubt: dict[str, Any]
    effects: EffectTracker
    pipeline: Pipeline
    links: Links
    ota: OtaService
    asks: AskHost
    control: ControlServer
    ui: Any  # kestrel.daemon.ui.server.UiServer while the config has a ui: section
    counters: dict[str, int]
    last_reload_error: str | None
    _started: float  # time.monotonic() at construction
    _new_records: asyncio.Event  # set on each append: wakes `follow`

    def unhealthy(self, loop_lag: float = 0.0) -> str | None:
        raise NotImplementedError  # the daemon's: what gates WATCHDOG=1

    async def reload(self) -> dict[str, Any]:
        raise NotImplementedError  # the daemon's: re-read the config

    async def control_call(self, action: str, args: dict[str, Any], *, source: str) -> dict[str, Any]:
        return await self.pipeline.call(Proposal(action, args, source))

    def control_status(self) -> dict[str, Any]:
        why = self.unhealthy()
        hw = self.hardware
        return {
            "agent": self.agent_id,
            "board": self.board,
            "config": self.config.source,
            "pid": os.getpid(),
            "health": "ok" if why is None else f"unhealthy: {why}",
            "uptime_s": round(time.monotonic() - self._started, 1),
            "sensors": hw.describe() if hw else {},
            "values": {k: v for k, v in self.values.items()},
            "actuators": {n: p.value for n, p in (hw.outputs.items() if hw else [])},
            "outbox": {
                "pending": len(self.outbox.pending()),
                "sent": self.outbox.sent,
                "failed": self.outbox.failed,
                "last_error": self.outbox.last_error,
            },
            "indoubt": dict(self.indoubt, open=self.effects.open),
            "ledger": self._ledger_status(),
            "actions": dict(self.pipeline.stats, backlog=self.pipeline.backlog),
            "counters": dict(self.counters),
            "models": self.models.describe() if self.models is not None else None,
            "mqtt": ({"connected": hw.bridge.connected} if hw and hw.bridge else None),
            "control": {"served": self.control.served, "refused": self.control.refused},
            "ui": self.ui.describe() if self.ui is not None else None,
            "policy": {
                "bundle": getattr(self.policy, "bundle_digest", None),
                "loaded": getattr(self.policy, "policy", None) is not None,
                "error": getattr(self.policy, "load_error", None),
            },
            **self.links.describe(),
            "last_reload_error": self.last_reload_error,
        }

    def _ledger_status(self) -> dict[str, int]:
        """Records held, how many a signed checkpoint covers, and the first kept one (> 0 once pruned)."""
        cp = self.ledger.latest_checkpoint()
        return {
            "size": self.ledger.size,
            "signed": cp.size if cp is not None else 0,
            "first_seq": getattr(self.ledger, "first_seq", 0),
        }

    def _sim_chip(self) -> Any:
        if getattr(self.factory, "backend", None) != "sim":
            raise UsageError(f"board {self.board} is real hardware; `kestrel sim` drives only the sim board")
        return self.factory

    def control_sim_drive(self, pin: str, value: int) -> dict[str, Any]:
        factory = self._sim_chip()
        ref = factory.profile.resolve_pin(pin)
        factory.chip(ref.chip).drive(ref.line, value)
        return {"pin": pin, "chip": ref.chip, "line": ref.line, "value": value}

    def control_sim_list(self) -> list[dict[str, Any]]:
        factory = self._sim_chip()
        roles = {}
        for role, parts in (("input", self.config.sensors), ("output", self.config.actuators)):
            for part in parts:
                pin = getattr(part, "pin", None)  # GPIO parts have one; serial and MQTT parts do not
                if pin:
                    roles[factory.profile.resolve_pin(pin)] = (role, part.name)
        out = [
            {
                "pin": ref.name,
                "chip": ref.chip,
                "line": ref.line,
                "role": role,
                "name": name,
                "level": factory.chip(ref.chip).level(ref.line),
            }
            for ref, (role, name) in roles.items()
        ]
        return sorted(out, key=lambda d: (d["chip"], d["line"]))

    async def control_follow(self, since_seq: int, kind: str | None) -> AsyncIterator[dict[str, Any]]:
        """Records from ``since_seq`` on, then new ones as they come (woken on appends, else polled)."""
        loop = asyncio.get_running_loop()
        next_seq = since_seq
        while True:
            self._new_records.clear()
            batch = await loop.run_in_executor(None, self._read_records, next_seq, kind)
            for rec in batch:
                yield {"seq": rec.seq, "time": rec.time, "kind": rec.kind, "body": rec.body, "digest": rec.digest}
                next_seq = rec.seq + 1
            if len(batch) < FOLLOW_BATCH:
                try:
                    await asyncio.wait_for(self._new_records.wait(), FOLLOW_POLL_S)
                except TimeoutError:
                    pass

    def _read_records(self, since: int, kind: str | None) -> list[Record]:
        out = []
        for rec in self.ledger.records(since_seq=since, kind=kind):
            out.append(rec)
            if len(out) >= FOLLOW_BATCH:
                break
        return out

    async def control_reload(self) -> dict[str, Any]:
        return await self.reload()

    async def control_ota_apply(self, data: bytes, *, source: str) -> dict[str, Any]:
        return await self.ota.apply(data, source=source)

    async def control_ota_rollback(self, reason: str) -> dict[str, Any]:
        return await self.ota.rollback(reason=reason)

    async def control_trust_apply(self, envelope: bytes) -> dict[str, Any]:
        return await self.ota.rotate_root(envelope)

    async def control_peer_receive(self, timeout: float, limit: int) -> list[dict[str, Any]]:
        return await self.links.receive(timeout=timeout, limit=limit)

    async def control_ask(
        self, params: dict[str, Any], *, source: str, emit: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any]:
        return await self.asks.run(params, source=source, emit=emit)

    @property
    def max_upload(self) -> int:
        return self.config.ota.max_bundle

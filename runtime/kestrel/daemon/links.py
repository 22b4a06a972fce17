"""What the daemon runs on top of its MQTT bridge: ledger sync and peer messaging.

:class:`Links` is started right after the bridge connects its first time (the bridge's
``start`` never waits for the broker) and stopped before the bridge closes, on shutdown
and around every reload (a reload builds a new bridge). ``agent.send`` is an action like
any other: the pipeline asks the policy first, then calls :meth:`Links.action_send`.
Received peer messages wait in the messenger's bounded inbox until the control socket's
``peer.receive`` (``kestrel.sdk.Client.messages``) takes them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KestrelError, TransportError

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["Links", "message_json"]

log = logging.getLogger("kestrel.daemon.links")
SYNC_MARGIN = 1024  # bytes above sync.batch_bytes a batch may take (its checkpoint note)


def message_json(msg: Any) -> dict[str, Any]:
    """A received peer message as the control socket returns it (docs/control-protocol.md)."""
    return {
        "from": msg.sender,
        "to": msg.recipient,
        "seq": msg.seq,
        "time_ms": msg.time_ms,
        "encrypted": msg.encrypted,
        "body": msg.body,
        "digest": msg.digest,
    }


def fit_batches(config: Any, max_payload: int) -> Any:
    """The sync config with batches that fit through the bridge (``mqtt.max_payload`` may be small)."""
    room = max_payload - SYNC_MARGIN
    if config.batch_bytes <= room:
        return config
    return dataclasses.replace(config, batch_bytes=max(1024, room))


class Links:
    """Sync and peer messaging over one bridge; either may be absent (config or key type)."""

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str],
        ledger: Ledger,
        signer: Any,
        sync_config: Any,
        peers: bool = True,
        policy: Any = None,
        bls_key: Any = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.ledger, self.signer = ledger, signer
        self.sync_config = sync_config
        self.peers = peers
        self.policy, self.bls_key = policy, bls_key
        self.sync: Any = None
        self.messenger: Any = None
        self.quorum: Any = None  # kestrel.daemon.quorum.QuorumCoordinator, with a BLS key and a messenger
        self.error: str | None = None  # why sync or peers could not start (status shows it)

    async def start(self, bridge: Any) -> None:
        """Start sync (unless ``sync.enabled: false``) and, with a signer, the peer messenger."""
        self.error = None
        if self.sync_config is not None and self.sync_config.enabled:
            from ..sync.sync import LedgerSync

            sync = LedgerSync(
                self.ledger, bridge, config=fit_batches(self.sync_config, bridge.max_payload), state_dir=self.state_dir
            )
            try:
                await sync.start()
                self.sync = sync
            except KestrelError as exc:  # e.g. a corrupt offset file: keep running, say why
                self.error = f"ledger sync not started: {exc.message}"
                log.error("%s", self.error)
        if self.peers and self.signer is not None:
            await self._start_messenger(bridge)

    async def _start_messenger(self, bridge: Any) -> None:
        from ..sync.peers.keyagree import SoftwareKeyAgreement
        from ..sync.peers.messenger import PeerMessenger

        ka = None
        if getattr(self.signer, "private_key", None) is not None:
            ka = SoftwareKeyAgreement.from_signer(self.signer)  # else: signed-only messages (TPM key)
        m = PeerMessenger(
            state_dir=self.state_dir, signer=self.signer, bridge=bridge, ledger=self.ledger, key_agreement=ka
        )
        await m.start()
        self.messenger = m
        if self.bls_key is not None and self.policy is not None:
            self._start_quorum()

    def _start_quorum(self) -> Any:
        from .quorum import QuorumCoordinator

        self.quorum = QuorumCoordinator(
            messenger=self.messenger,
            ledger=self.ledger,
            policy=self.policy,
            bls_key=self.bls_key,
            state_dir=self.state_dir,
        )
        return self.quorum

    async def stop(self) -> None:
        """Stop both (sync persists its acknowledged offset); the bridge is still open here."""
        if self.quorum is not None:
            await self.quorum.close()
            self.quorum = None
        if self.messenger is not None:
            try:
                await self.messenger.stop()
            except Exception as exc:
                log.warning("stopping the peer messenger: %s", exc)
            self.messenger = None
        if self.sync is not None:
            try:
                await self.sync.stop()
            except Exception as exc:
                log.warning("stopping ledger sync: %s", exc)
            self.sync = None

    # -- actions and control requests ----------------------------------------------------------
    async def action_send(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.messenger is None:
            raise TransportError(
                "agent.send needs an MQTT broker (device config section 'mqtt') and a signing identity",
                hint="configure mqtt: in the device config",
            )
        return await self.messenger.action_send(args)

    async def quorum_gate(self, proposal: Any, decision: Any) -> Any:
        """The pipeline's hook: a decision waiting for a quorum (``actions[i].quorum``) becomes the
        group's; without a BLS key or peer messaging it stays a deny (fail closed)."""
        if not getattr(decision, "rule", "").endswith(".quorum") or self.policy is None:
            return decision
        quorum = self.quorum
        if quorum is None and self.messenger is not None:  # a proposer without a BLS key of its own
            quorum = self._start_quorum()
        if quorum is None or quorum.quorum_for(decision) is None:
            return decision  # no peer messaging: the deny stands
        return await quorum.gate(proposal, decision)

    async def receive(self, *, timeout: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` received messages; waits up to ``timeout`` seconds for the first one."""
        if self.messenger is None:
            raise TransportError(
                "peer messaging is not running (no MQTT broker configured)", hint="configure mqtt: in the device config"
            )
        out: list[dict[str, Any]] = []
        m = self.messenger
        if timeout > 0:
            try:
                out.append(message_json(await m.receive(timeout)))
            except TimeoutError:
                return out
        while len(out) < limit and (msg := m.receive_nowait()) is not None:
            out.append(message_json(msg))
        return out

    def describe(self) -> dict[str, Any]:
        """The ``sync`` and ``peers`` parts of the daemon's status."""
        out: dict[str, Any] = {"sync": None, "peers": None, "links_error": self.error}
        if self.sync is not None:
            out["sync"] = self.sync.status.to_json()  # the fields of STATE/data/sync/status.json
        if self.messenger is not None:
            out["peers"] = {
                "did": self.messenger.did,
                "received": self.messenger.received,
                "waiting": self.messenger.waiting,
                "refused": dict(self.messenger.refused),
            }
        if self.quorum is not None:
            out["quorum"] = dict(self.quorum.stats)
        return out

"""Agent-to-agent messaging over the runtime's MQTT bridge (the I/O shell around ``envelope``).

Each agent reads ``kestrel/<own did>/inbox``; a sender publishes there at QoS 1. Every message
sent is recorded as ``peer.sent``, every message accepted as ``peer.received`` and every message
refused as ``peer.refused`` (with its reason), all with the SHA-256 of the exact message bytes,
never the content. Sending is the action ``agent.send``: inside the daemon the action pipeline
asks the policy first and then calls :meth:`PeerMessenger.action_send`; standalone code uses
:func:`send_under_policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import DataError, UsageError
from ...identity.keys import PublicKey, Signer
from .._tasks import cancel_task
from ..wire import inbox_topic
from .envelope import PeerMessageError, VerifiedMessage, message_digest, open_message, seal
from .keyagree import KeyAgreement
from .trust import PeerSeqStore, load_trust_list, trust_path

if TYPE_CHECKING:
    from ...ledger.recorder import RecordLog

__all__ = ["PeerMessenger", "SentMessage", "PeerSendDenied", "send_under_policy", "ACTION"]

log = logging.getLogger("kestrel.peers")
ACTION = "agent.send"
MAX_HANDLING = 64  # typed messages being handled at once (kestrel.daemon.quorum)


class PeerSendDenied(DataError):
    """The policy did not allow ``agent.send``."""


@dataclass(frozen=True)
class SentMessage:
    to: str
    seq: int
    digest: str
    encrypted: bool
    size: int


class PeerMessenger:
    """Send to and receive from trusted peers. ``await start()`` subscribes to the inbox."""

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str],
        signer: Signer,
        bridge: Any,
        ledger: RecordLog,
        key_agreement: KeyAgreement | None = None,
        window_s: float = 300.0,
        inbox_size: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.signer, self.bridge, self.ledger = signer, bridge, ledger
        self.did = signer.public_key.did
        self._ka = key_agreement
        self._window = window_s
        self._clock = clock
        self._seq = PeerSeqStore(self.state_dir)
        self._inbox: asyncio.Queue[VerifiedMessage] = asyncio.Queue(inbox_size)
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None
        self.refused: dict[str, int] = {}
        self.received = 0
        # body "t" -> coroutine taking the VerifiedMessage (e.g. kestrel.daemon.quorum): such messages
        # are handed there, once recorded as received, instead of waiting in the inbox
        self.handlers: dict[str, Callable[[VerifiedMessage], Awaitable[None]]] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._send_locks: dict[str, asyncio.Lock] = {}  # per recipient (bounded by the trust list)
        self._trust: tuple[Any, Any] = (None, None)  # (peers.json stat, TrustList): re-read when it changes

    async def start(self) -> None:
        self._sub = await self.bridge.subscribe(inbox_topic(self.did), qos=1)
        self._task = asyncio.create_task(self._receive_loop(), name="kestrel-peer-inbox")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
        for task in list(self._handling):
            await cancel_task(task)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self.bridge.unsubscribe(self._sub)
            self._sub = None

    async def _trust_list(self) -> Any:
        """The trust list, read again only when ``peers.json`` changed (``kestrel agent-connect``)."""
        try:
            st = os.stat(trust_path(self.state_dir))
            sig: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = None
        if sig is not None and self._trust[0] == sig:
            return self._trust[1]
        trust = await asyncio.to_thread(load_trust_list, self.state_dir)
        self._trust = (sig, trust)
        return trust

    # -- sending ------------------------------------------------------------------------------
    async def send(self, to: str, body: Any, *, encrypt: bool = False) -> SentMessage:
        """Seal ``body`` for the trusted peer ``to``, record ``peer.sent``, publish at QoS 1.

        No policy check here: callers go through the action pipeline or :func:`send_under_policy`.
        """
        trust = await self._trust_list()
        if trust.get(to) is None:
            raise UsageError(f"{to} is not in the trust list", hint=f"run: kestrel agent-connect {to}")
        recipient = PublicKey.from_did(to)
        lock = self._send_locks.setdefault(to, asyncio.Lock())
        async with lock:  # one at a time per recipient: numbers reach the broker in increasing order
            seq = await asyncio.to_thread(self._seq.next_outgoing, to)
            data = await asyncio.to_thread(
                seal, body, signer=self.signer, recipient=recipient, seq=seq, now=self._clock(), encrypt=encrypt
            )  # a TPM signs in tens of ms
            sent = SentMessage(to, seq, message_digest(data), encrypt, len(data))
            await self.ledger.append_async(
                "peer.sent", {"to": to, "seq": seq, "digest": sent.digest, "encrypted": encrypt, "bytes": sent.size}
            )
            await self.bridge.publish(inbox_topic(to), data, qos=1)
        return sent

    async def action_send(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ``agent.send`` action handler: args ``to`` (did), ``body``, optional ``encrypt``."""
        unknown = set(args) - {"to", "body", "encrypt"}
        if unknown or not isinstance(args.get("to"), str) or "body" not in args:
            raise UsageError("agent.send takes 'to' (a peer's did:key), 'body' and optionally 'encrypt'")
        sent = await self.send(args["to"], args["body"], encrypt=bool(args.get("encrypt", False)))
        return {"to": sent.to, "seq": sent.seq, "digest": sent.digest, "encrypted": sent.encrypted}

    # -- receiving ------------------------------------------------------------------------------
    async def receive(self, timeout: float | None = None) -> VerifiedMessage:
        """The next accepted message (raises asyncio.TimeoutError after ``timeout`` seconds)."""
        return await asyncio.wait_for(self._inbox.get(), timeout)

    def receive_nowait(self) -> VerifiedMessage | None:
        """The next accepted message if one is waiting, else None."""
        try:
            return self._inbox.get_nowait()
        except asyncio.QueueEmpty:
            return None

    @property
    def waiting(self) -> int:
        """How many accepted messages wait to be received."""
        return self._inbox.qsize()

    async def _receive_loop(self) -> None:
        async for msg in self._sub:
            try:
                await self.handle(msg.payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one message end the inbox
                log.exception("peer message handling failed")

    async def handle(self, payload: bytes) -> VerifiedMessage | None:
        """Verify one inbox message; record it as received or refused. Returns it if accepted."""
        trust = await self._trust_list()
        me: KeyAgreement | PublicKey = self._ka if self._ka is not None else self.signer.public_key
        try:
            msg = open_message(
                payload, me=me, trusted=trust.keys(), replay=self._seq.replay, now=self._clock(), window_s=self._window
            )
        except PeerMessageError as exc:
            self.refused[exc.reason] = self.refused.get(exc.reason, 0) + 1
            log.warning("peer message refused: %s", exc.message)
            await self.ledger.append_async(
                "peer.refused",
                {
                    "from": exc.sender,
                    "seq": exc.seq,
                    "reason": exc.reason,
                    "digest": message_digest(bytes(payload)),
                    "bytes": len(payload),
                },
            )
            return None
        await asyncio.to_thread(self._seq.commit, msg.replay)  # before recording: never accept twice
        record = {
            "from": msg.sender,
            "seq": msg.seq,
            "digest": msg.digest,
            "encrypted": msg.encrypted,
            "bytes": len(payload),
        }
        kind = msg.body.get("t") if isinstance(msg.body, dict) else None
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        submit = getattr(self.ledger, "submit", None)
        if handler is not None and isinstance(msg.body.get("t"), str) and submit is not None:
            # Queued, not awaited: the ledger is FIFO, so whatever the handler then records and
            # awaits (its answer's peer.sent, a decision) is durable only after this record is.
            submit("peer.received", record).add_done_callback(self._received_recorded)
        else:
            await self.ledger.append_async("peer.received", record)
        self.received += 1
        if handler is not None and isinstance(msg.body.get("t"), str):
            while len(self._handling) >= MAX_HANDLING:  # bounded: a flood waits here, in the receive loop
                await asyncio.wait(list(self._handling), return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.get_running_loop().create_task(self._dispatch(handler, msg))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
            return msg
        if self._inbox.full():
            self._inbox.get_nowait()  # oldest dropped; it is in the ledger as received
        self._inbox.put_nowait(msg)
        return msg

    @staticmethod
    def _received_recorded(fut: Any) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("a peer.received record could not be written to the ledger: %s", exc)

    @staticmethod
    async def _dispatch(handler: Callable[[VerifiedMessage], Awaitable[None]], msg: VerifiedMessage) -> None:
        try:
            await handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # one bad message never ends the inbox
            log.exception("handling a %s message from %s failed", msg.body.get("t"), msg.sender)


async def send_under_policy(
    messenger: PeerMessenger, policy: Any, to: str, body: Any, *, encrypt: bool = False
) -> SentMessage:
    """Ask the policy engine for ``agent.send`` (it records the decision), then send."""
    decision = await asyncio.to_thread(policy.decide, ACTION, {"to": to, "body": body, "encrypt": encrypt})
    if not decision.allowed:
        raise PeerSendDenied(
            f"policy denied agent.send to {to}: {decision.reason} (rule {decision.rule})",
            hint="the owner's policy must list agent.send among its actions",
        )
    return await messenger.send(to, body, encrypt=encrypt)

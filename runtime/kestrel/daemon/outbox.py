"""``send_email``: a durable outbox in front of an SMTP relay.

A message is written to ``STATE/data/outbox/<id>.json`` (atomic, fsynced, 0600)
before the caller hears "queued"; a delivery task sends it through the relay and
deletes it only once the relay accepted it. While the relay is unreachable the
message waits and is retried with exponential backoff and jitter, across restarts.
A relay that refuses the message for good (5xx) moves it to ``outbox/failed/``.
Format: docs/device-config.md ("Outbox files").

Each attempt is bracketed in the ledger: once the relay's session is open (so a relay
that cannot be reached costs no records), ``outbox.sending`` is made durable before the
message is handed over, and ``outbox.sent``, ``outbox.deferred`` or ``outbox.failed``
(naming that record: ``intent``) after; the file is removed only after ``outbox.sent``
is on flash. A crash in between leaves an attempt in doubt: the next start records
``outbox.indoubt`` and sends the message again with the same Message-ID, so delivery is
at-least-once (docs/device-config.md, "Delivery across crashes").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._internal.fsutil import atomic_write, check_private, ensure_private_dir, fsync_dir, read_bytes
from ..errors import DataError, TransportError
from ..policy.canonical import ArgsError
from ..policy.canonical.actions import MAX_EMAIL_BODY as MAX_BODY
from ..policy.canonical.actions import send_email as canonical_email
from .config import OutboxConfig, SmtpConfig
from .effects import CURRENT_DECISION, EffectTracker

if TYPE_CHECKING:
    import email.message

__all__ = ["Outbox", "OutboxMessage", "EmailArgsError", "parse_email_args"]

log = logging.getLogger("kestrel.daemon.outbox")
_ID = re.compile(r"[0-9]{13}-[0-9a-f]{8}")


class EmailArgsError(DataError):
    """send_email arguments are missing or unsafe (header injection, bad address)."""


@dataclass(frozen=True)
class OutboxMessage:
    id: str
    to: tuple[str, ...]
    subject: str
    body: str
    created: float
    decision: int | None = None  # seq of the policy.decision that allowed it

    @property
    def message_id(self) -> str:
        """The Message-ID header: ``<ID@kestrel>``; the ledger's outbox records carry it."""
        return f"<{self.id}@kestrel>"

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "v": 1,
            "id": self.id,
            "to": list(self.to),
            "subject": self.subject,
            "body": self.body,
            "created": self.created,
        }
        if self.decision is not None:
            doc["decision"] = self.decision
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> OutboxMessage:
        try:
            d = json.loads(data)
            if d.get("v") != 1:
                raise ValueError("unknown version")
            c = canonical_email({"to": d["to"], "subject": d["subject"], "body": d["body"]})
            if c["to"] != d["to"] or not isinstance(d["id"], str) or not _ID.fullmatch(d["id"]):
                raise ValueError("recipients or id not in canonical form")
            decision = d.get("decision")
            if decision is not None and (type(decision) is not int or decision < 0):
                raise ValueError("decision is not a sequence number")
            return cls(d["id"], tuple(c["to"]), c["subject"], c["body"], float(d["created"]), decision)
        except (ValueError, KeyError, TypeError, ArgsError) as exc:
            raise DataError(f"outbox file {source} is corrupt: {exc}") from None


def parse_email_args(args: dict[str, Any], *, now: float) -> OutboxMessage:
    """The message of send_email's canonical arguments (pure; docs/policy.md, "Canonical arguments"):
    ``to`` (one bare address or a list), ``subject``, ``body``."""
    try:
        c = canonical_email(args)
    except ArgsError as exc:
        raise EmailArgsError(exc.message, hint=exc.hint) from None
    mid = f"{int(now * 1000):013d}-{os.urandom(4).hex()}"
    return OutboxMessage(mid, tuple(c["to"]), c["subject"], c["body"], now, CURRENT_DECISION.get())


class Outbox:
    """Durable queue of e-mails plus the task that delivers them."""

    def __init__(
        self,
        directory: Path,
        *,
        smtp: SmtpConfig | None,
        config: OutboxConfig,
        record: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None,
        effects: EffectTracker | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.smtp = smtp
        self.config = config
        self._record = record
        self._effects = effects
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._attempts: dict[str, int] = {}
        self._next: dict[str, float] = {}
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def pending(self) -> list[str]:
        try:
            return sorted(p.stem for p in self.dir.glob("*.json"))
        except OSError:
            return []

    def enqueue_blocking(self, msg: OutboxMessage) -> None:
        ensure_private_dir(self.dir)
        if len(self.pending()) >= self.config.max_items:
            raise TransportError(
                f"the outbox holds {self.config.max_items} messages already; not queueing more",
                hint="check the SMTP relay settings and that the relay is reachable",
            )
        atomic_write(self.dir / f"{msg.id}.json", msg.to_json(), mode=0o600)

    async def enqueue(self, msg: OutboxMessage) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.enqueue_blocking, msg)
        self._wake.set()

    def _load(self, mid: str) -> OutboxMessage:
        path = self.dir / f"{mid}.json"
        return OutboxMessage.from_json(read_bytes(path, what="outbox message", max_size=2 * MAX_BODY), source=str(path))

    def _build(self, msg: OutboxMessage) -> email.message.EmailMessage:
        import email.message
        import email.utils

        assert self.smtp is not None
        m = email.message.EmailMessage()
        m["From"] = self.smtp.sender
        m["To"] = ", ".join(msg.to)  # bare addr-specs (canonical): the header lists exactly the envelope
        m["Subject"] = msg.subject
        m["Date"] = email.utils.formatdate(msg.created)
        m["Message-ID"] = f"<{msg.id}@kestrel>"
        m.set_content(msg.body)
        return m

    def _connect_blocking(self) -> Any:
        """Open a session with the relay (TLS and login included); nothing is handed over yet."""
        import smtplib
        import ssl

        cfg = self.smtp
        assert cfg is not None
        ctx = ssl.create_default_context()
        cls = smtplib.SMTP_SSL if cfg.security == "tls" else smtplib.SMTP
        kw: dict[str, Any] = {"context": ctx} if cfg.security == "tls" else {}
        s = cls(cfg.host, cfg.port, timeout=cfg.timeout_s, **kw)
        try:
            if cfg.security == "starttls":
                s.starttls(context=ctx)
            if cfg.username and cfg.password_file:
                check_private(cfg.password_file)
                password = read_bytes(cfg.password_file, what="SMTP password file", max_size=4096)
                s.login(cfg.username, password.decode().strip())
        except BaseException:
            s.close()
            raise
        return s

    def _send_blocking(self, s: Any, msg: OutboxMessage) -> None:
        """Hand one message to the relay over an open session (runs in an executor thread)."""
        cfg = self.smtp
        assert cfg is not None
        # The envelope is the canonical recipient list the policy decided on, never re-read from headers.
        s.send_message(self._build(msg), from_addr=cfg.sender, to_addrs=list(msg.to))

    @staticmethod
    def _close_blocking(s: Any) -> None:
        import smtplib

        try:
            s.quit()
        except (OSError, smtplib.SMTPException):
            s.close()

    def _move_failed(self, mid: str) -> None:
        failed = ensure_private_dir(self.dir / "failed")
        os.replace(self.dir / f"{mid}.json", failed / f"{mid}.json")
        fsync_dir(self.dir)

    async def _deliver(self, mid: str) -> None:
        import smtplib

        loop = asyncio.get_running_loop()
        try:
            msg = await loop.run_in_executor(None, self._load, mid)
        except DataError as exc:
            log.error("%s; moving it to outbox/failed", exc)
            await loop.run_in_executor(None, self._move_failed, mid)
            self.failed += 1
            return
        try:
            session = await loop.run_in_executor(None, self._connect_blocking)
        except (OSError, smtplib.SMTPException, TransportError) as exc:  # nothing was handed over
            self._backoff(mid, exc)
            return
        try:
            await self._attempt(mid, msg, session)
        finally:
            await loop.run_in_executor(None, self._close_blocking, session)

    async def _attempt(self, mid: str, msg: OutboxMessage, session: Any) -> None:
        """intent (durable) -> hand over -> outcome (durable) -> file removed or moved; then the effect ends."""
        import smtplib

        loop = asyncio.get_running_loop()
        effect = self._effects.begin() if self._effects is not None else None
        intent_body: dict[str, Any] = {
            "id": mid,
            "message_id": msg.message_id,
            "attempt": self._attempts.get(mid, 0) + 1,
        }
        if msg.decision is not None:
            intent_body["decision"] = msg.decision
        try:
            intent = await self._record_now("outbox.sending", intent_body)
        except Exception as exc:  # no intent on flash: do not send
            self._end(effect)
            self._backoff(mid, exc)
            return
        seq = getattr(intent, "seq", None)
        if effect is not None and self._effects is not None and seq is not None:
            self._effects.bind(effect, seq)
        ref = {"id": mid, "message_id": msg.message_id, "intent": seq}
        try:
            await loop.run_in_executor(None, self._send_blocking, session, msg)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
            code = getattr(exc, "smtp_code", 0) or 550
            if 500 <= code < 600 or isinstance(exc, smtplib.SMTPRecipientsRefused):
                log.error("relay refused message %s for good: %s", mid, exc)
                if await self._emit("outbox.failed", {**ref, "error": str(exc)[:200]}):
                    await loop.run_in_executor(None, self._move_failed, mid)
                    self._end(effect)
                self.failed += 1
                return
            if await self._emit("outbox.deferred", {**ref, "error": str(exc)[:200]}):
                self._end(effect)
            self._backoff(mid, exc)
            return
        except (OSError, smtplib.SMTPException, TransportError) as exc:
            # the session broke: if that was after the end of the data, the relay may have the message
            if await self._emit("outbox.deferred", {**ref, "error": (str(exc) or type(exc).__name__)[:200]}):
                self._end(effect)
            self._backoff(mid, exc)
            return
        self._attempts.pop(mid, None)
        self._next.pop(mid, None)
        self.sent += 1
        self.last_error = None
        log.info("delivered message %s to %s", mid, ", ".join(msg.to))
        if await self._emit("outbox.sent", {**ref, "recipients": len(msg.to)}):
            await loop.run_in_executor(None, self._unlink, mid)  # only now: a crash before resends it
            self._end(effect)
        # else: the file stays; the next start reports the attempt in doubt and sends it again

    def _end(self, effect: Any) -> None:
        if effect is not None and self._effects is not None:
            self._effects.end(effect)

    def settle(self, finished: dict[str, str]) -> int:
        """At start, before delivering: files of messages whose ``outbox.sent`` / ``outbox.failed`` is on
        flash but which a crash left in the outbox are removed / moved (not sent again). Blocking."""
        done = 0
        for mid, kind in finished.items():
            if not (self.dir / f"{mid}.json").exists():
                continue
            if kind == "outbox.sent":
                self._unlink(mid)
            else:
                self._move_failed(mid)
            done += 1
        return done

    async def drain(self, timeout: float) -> None:
        """Start no more deliveries and wait (at most ``timeout``) for the one under way to finish."""
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("a mail delivery was still under way at shutdown; it will be reported in doubt")

    def _unlink(self, mid: str) -> None:
        (self.dir / f"{mid}.json").unlink(missing_ok=True)
        fsync_dir(self.dir)

    def _backoff(self, mid: str, exc: BaseException) -> None:
        n = self._attempts.get(mid, 0) + 1
        self._attempts[mid] = n
        delay = min(self.config.retry_max_s, self.config.retry_initial_s * 2 ** (n - 1))
        delay *= random.uniform(0.5, 1.0)
        self._next[mid] = time.monotonic() + delay
        self.last_error = str(exc) or type(exc).__name__
        log.warning(
            "relay %s unavailable for message %s (attempt %d): %s; retrying in %.1fs",
            self.smtp.host if self.smtp else "?",
            mid,
            n,
            self.last_error,
            delay,
        )

    async def _record_now(self, kind: str, body: dict[str, Any]) -> Any:
        """Append durably (raises if that fails); without a recorder (tests) there is nothing to append."""
        if self._record is None:
            return None
        return await self._record(kind, body)

    async def _emit(self, kind: str, body: dict[str, Any]) -> bool:
        """Append durably; False (logged) if that failed."""
        try:
            await self._record_now(kind, body)
            return True
        except Exception as exc:
            log.error("could not record %s: %s", kind, exc)
            return False

    async def run(self) -> None:
        """Deliver queued messages forever (cancel to stop); idles while no relay is configured."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            if self._stopping:
                return
            due = [m for m in self.pending() if self._next.get(m, 0.0) <= now] if self.smtp else []
            for mid in due:
                if self._stopping:
                    return
                self._idle.clear()
                try:
                    await self._deliver(mid)
                finally:
                    self._idle.set()
            waits = [t - time.monotonic() for m, t in self._next.items()]
            timeout = max(0.05, min(waits)) if waits and self.smtp else 1.0
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

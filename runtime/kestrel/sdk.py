"""Python SDK for a running Kestrel daemon, over its local control socket.

::

    from kestrel.sdk import Client
    with Client() as k:                       # the default state directory
        k.call("send_email", to="alice@example.com", subject="Hello")
        print(k.status()["health"])
        for record in k.follow(since_seq=0):  # blocks, streaming new ledger records
            print(record["seq"], record["kind"])
        k.call("agent.send", to=peer_did, body={"hello": 1})   # under policy, like any action
        for msg in k.messages(timeout=5):     # peer messages the daemon received and verified
            print(msg["from"], msg["body"])
        for step in k.ask("turn on the fan"):  # the daemon plans, the policy decides, actions run
            print(step["text"] if step["type"] == "step" else step["status"])

Every method is a blocking request on one Unix-socket connection (not thread-safe:
use one Client per thread). The wire format is docs/control-protocol.md.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._internal.paths import StateLayout, resolve_state_dir
from ._internal.unixsock import connect_unix
from .daemon import protocol as P
from .daemon.protocol import RemoteError
from .errors import DataError, TransportError

__all__ = ["Client", "RemoteError", "ActionDenied", "NoDaemonError", "socket_path_for"]


class ActionDenied(RemoteError):
    """The policy refused the action (the refusal is in the ledger)."""


class NoDaemonError(TransportError):
    """No daemon listens on the control socket (none runs on that state directory)."""


def socket_path_for(state_dir: str | os.PathLike[str] | None) -> Path:
    return StateLayout(resolve_state_dir(state_dir)).run / "control.sock"


class Client:
    """A connection to ``STATE/run/control.sock`` (opened on first use)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else socket_path_for(state_dir)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            connect_unix(sock, self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NoDaemonError(
                f"no Kestrel daemon is listening on {self.socket_path}",
                hint="start it with `kestrel run` (same --state), or pass the right --state",
            ) from None
        except PermissionError:
            sock.close()
            raise TransportError(
                f"not allowed to open {self.socket_path}",
                hint="run as the daemon's user, or join the control group set in the device config (control.group)",
            ) from None
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {self.socket_path}: {exc.strerror or exc}") from None
        self._sock = sock
        return sock

    def connect(self) -> Client:
        """Open the connection now (else the first request does); NoDaemonError if none listens."""
        self._connect()
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _readline(self, *, timeout: float | None) -> bytes:
        sock = self._connect()
        sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                self.close()
                raise TransportError(f"the daemon did not answer within {timeout}s") from None
            except OSError as exc:
                refusal = self._pending_reply() if self._buf else None
                self.close()
                if refusal is not None and "error" in refusal:
                    self._raise(refusal)
                raise TransportError(f"control connection failed: {exc.strerror or exc}") from None
            if not chunk:
                self.close()
                raise TransportError("the daemon closed the control connection")
            self._buf += chunk
            if len(self._buf) > P.MAX_LINE * 4:
                self.close()
                raise TransportError("the daemon sent an over-long line")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _send(self, method: str, params: dict[str, Any]) -> int:
        rid = next(self._ids)
        try:
            line = P.encode({"id": rid, "method": method, "params": params})
        except (TypeError, ValueError, RecursionError) as exc:
            raise DataError(
                f"the request cannot be sent as JSON: {exc}",
                hint="arguments must be JSON values with finite numbers (no NaN or Infinity)",
            ) from None
        sock = self._connect()
        try:
            sock.sendall(line)
        except OSError as exc:
            refusal = self._pending_reply()  # the daemon may have answered (forbidden) and closed first
            self.close()
            if refusal is not None and "error" in refusal:
                self._raise(refusal)
            raise TransportError(f"control connection failed: {exc.strerror or exc}") from None
        return rid

    def _pending_reply(self) -> dict[str, Any] | None:
        """A reply line the daemon already sent on this connection, if one is waiting (never blocks long)."""
        if self._sock is None:
            return None
        try:
            self._sock.settimeout(0.5)
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                self._buf += chunk
        except OSError:
            pass
        line, nl, _ = self._buf.partition(b"\n")
        if not nl:
            return None
        try:
            return P.decode_reply(line)
        except P.ProtocolError:
            return None

    @staticmethod
    def _raise(msg: dict[str, Any]) -> None:
        err = msg["error"]
        code = str(err.get("code") or "failed")
        cls = ActionDenied if code == "denied" else RemoteError
        reason = err.get("reason") if isinstance(err.get("reason"), str) else None
        raise cls(code, err["message"], hint=err.get("hint"), reason=reason, exit_code=err.get("exit"))

    def request(self, method: str, params: dict[str, Any] | None = None, *, wait: float = 0.0) -> Any:
        """Send one request and return its result (raises RemoteError on an error reply).

        ``wait``: seconds the daemon may legitimately take on top of ``timeout`` (peer.receive).
        """
        rid = self._send(method, params or {})
        timeout = None if self.timeout is None else self.timeout + wait
        while True:
            msg = P.decode_reply(self._readline(timeout=timeout))
            if msg.get("id") not in (rid, None):
                continue
            if "error" in msg:
                self._raise(msg)
            if "result" in msg:
                return msg["result"]

    # -- methods ------------------------------------------------------------------------------
    def call(self, action: str, /, **args: Any) -> Any:
        """Ask the daemon to run ``action``; returns its result, raises ActionDenied if policy refuses."""
        return self.request("call", {"action": action, "args": args})

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def reload(self) -> dict[str, Any]:
        return self.request("reload")

    def sim_drive(self, pin: str, value: int) -> dict[str, Any]:
        return self.request("sim.drive", {"pin": pin, "value": int(value)})

    def sim_list(self) -> list[dict[str, Any]]:
        return self.request("sim.list")

    def messages(self, *, timeout: float = 0.0, max: int = 100) -> list[dict[str, Any]]:
        """Peer messages received and verified since the last call (oldest first, at most ``max``).

        Waits up to ``timeout`` seconds for the first one; ``[]`` if none came. Each is
        ``{"from", "to", "seq", "time_ms", "encrypted", "body", "digest"}``.
        """
        return self.request("peer.receive", {"timeout": timeout, "max": max}, wait=timeout)

    def receive(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The next received peer message, or None after ``timeout`` seconds."""
        got = self.messages(timeout=timeout, max=1)
        return got[0] if got else None

    def ota_apply(self, bundle: bytes) -> dict[str, Any]:
        """Have the daemon verify and activate a signed bundle (sent in chunks; the ledger records it)."""
        import hashlib

        return self._upload(lambda off, n: bundle[off : off + n], len(bundle), hashlib.sha256(bundle).hexdigest())

    def ota_apply_file(self, fd: int, size: int, sha256: str) -> dict[str, Any]:
        """:meth:`ota_apply` of an open bundle file of ``size`` bytes, read chunk by chunk (bounded memory)."""
        return self._upload(lambda off, n: os.pread(fd, n, off), size, sha256)

    def _upload(self, read: Any, size: int, sha256: str) -> dict[str, Any]:
        """The first chunk says the bundle's size and sha256, so an oversize one is refused (and recorded)
        before anything else is sent."""
        step = P.UPLOAD_CHUNK
        for off in range(0, max(size, 1), step):
            chunk, more = read(off, step), off + step < size
            params: dict[str, Any] = {"data": {"$hex": chunk.hex()}, "more": more}
            if off == 0:
                params.update(size=size, sha256=sha256)
            result = self.request("ota.apply", params, wait=60.0)
        return result

    def ota_rollback(self, *, reason: str = "operator") -> dict[str, Any]:
        return self.request("ota.rollback", {"reason": reason}, wait=60.0)

    def record(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Append a ``model.deployed`` or ``memory.added`` record to the daemon's ledger (the daemon's
        user or root only); returns ``{"seq", "digest", "time"}`` once it is durable."""
        return self.request("record", {"kind": kind, "body": body})

    def trust_apply(self, root: bytes) -> dict[str, Any]:
        """Install the next signed trust root (verified by the daemon against the current one)."""
        return self.request("trust.apply", {"root": {"$hex": root.hex()}})

    def ask(self, goal: str, /, **options: Any) -> Iterator[dict[str, Any]]:
        """Have the daemon plan and act on ``goal``; yield each step as it happens, then the outcome.

        ``options``: ``rules`` (rules-file text), ``rules_only``, ``endpoint``, ``llm``, ``api``,
        ``tools`` (action names), ``budgets`` ({"max_steps", "max_tokens", "time_s"}), ``threads``,
        ``memory`` (docs/control-protocol.md, ``ask``). Steps are ``{"type": "step", "index",
        "planner", "text", "call", "decision", "result", "error", "final", "seq"}``; the last item is
        ``{"type": "outcome", "status", "final", "steps", "tokens", ...}``. Allowed calls are executed
        by the daemon (``action.result`` in its ledger); ActionDenied is never raised for a refusal:
        the planner sees it and it is in the step. Uses its own connection; closing the generator
        early stops the run at its next step.
        """
        budget = float((options.get("budgets") or {}).get("time_s", 60.0))
        timeout = None if self.timeout is None else self.timeout + budget
        return self._stream("ask", {"goal": goal, "options": options}, timeout=timeout, final=True)

    def follow(self, since_seq: int = 0, *, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Yield ledger records from ``since_seq`` on, then new ones as they are appended (forever).

        Uses its own connection; close the generator (or break) to stop.
        """
        params: dict[str, Any] = {"since_seq": since_seq}
        if kind:
            params["kind"] = kind
        return self._stream("follow", params, timeout=None, final=False)

    def _stream(
        self, method: str, params: dict[str, Any], *, timeout: float | None, final: bool
    ) -> Iterator[dict[str, Any]]:
        """Events of one streaming request on its own connection; with ``final``, then its result."""
        sub = Client(socket_path=self.socket_path, timeout=self.timeout)
        try:
            rid = sub._send(method, params)
            while True:
                msg = P.decode_reply(sub._readline(timeout=timeout))
                if msg.get("id") not in (rid, None):
                    continue
                if "event" in msg:
                    yield msg["event"]
                elif "error" in msg:
                    self._raise(msg)
                else:
                    if final:
                        yield msg["result"]
                    return
        finally:
            sub.close()

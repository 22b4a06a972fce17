"""The control socket: ``STATE/run/control.sock`` (docs/control-protocol.md).

Access is checked twice: by the file system (directory 0750, socket 0660, group
= the configured control group) and, for every connection, by the kernel's
SO_PEERCRED: only the daemon's own uid, root, and members of the configured group
are served. Everyone else gets one ``forbidden`` error line; the refusal is logged
and recorded in the ledger (``control.refused``, at most one record per uid per
:data:`REFUSAL_RECORD_INTERVAL` seconds, the rest counted).
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .._internal.unixsock import bind_unix, connect_unix
from ..errors import ConfigError, KestrelError, TransportError
from . import protocol as P

__all__ = ["ControlServer", "ControlTarget", "PeerCred", "peer_credentials", "resolve_group", "peer_allowed"]

log = logging.getLogger("kestrel.daemon.control")
REFUSAL_RECORD_INTERVAL = 10.0


class ControlTarget(Protocol):
    """What the control server asks the daemon to do (kestrel.daemon.handlers.ControlHandlers, in the Daemon)."""

    async def control_call(self, action: str, args: dict[str, Any], *, source: str) -> dict[str, Any]: ...
    def control_status(self) -> dict[str, Any]: ...
    def control_sim_drive(self, pin: str, value: int) -> dict[str, Any]: ...
    def control_sim_list(self) -> list[dict[str, Any]]: ...
    def control_follow(self, since_seq: int, kind: str | None) -> AsyncIterator[dict[str, Any]]: ...
    async def control_reload(self) -> dict[str, Any]: ...
    async def control_ota_apply(self, data: bytes, *, source: str) -> dict[str, Any]: ...
    async def control_ota_rollback(self, reason: str) -> dict[str, Any]: ...
    async def control_trust_apply(self, envelope: bytes) -> dict[str, Any]: ...
    async def control_peer_receive(self, timeout: float, limit: int) -> list[dict[str, Any]]: ...
    async def control_ask(
        self, params: dict[str, Any], *, source: str, emit: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any]: ...
    @property
    def max_upload(self) -> int: ...


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def resolve_group(group: str | None, *, source: str = "device config") -> int | None:
    """The gid of a configured control group (name or number); ConfigError if unknown."""
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"control group {group!r} does not exist on this system",
            path=source,
            key="control.group",
            hint=f"create it (groupadd {group}) or remove control.group",
        ) from None


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if g.isdigit()}
    except OSError:
        pass
    return set()


class _Upload(bytearray):
    """One connection's ota.apply bytes so far, and the (size, sha256) its first chunk declared."""

    claim: tuple[int | None, str | None] = (None, None)


def _claimed(params: dict[str, Any]) -> tuple[int | None, str | None]:
    """The (size, sha256) an ota.apply upload's first chunk declares (the client's word: checked later)."""
    size, digest = params.get("size"), params.get("sha256")
    if size is not None and (type(size) is not int or size < 0):
        raise P.ProtocolError("ota.apply: 'size' must be the bundle's size in bytes")
    if digest is not None and not (
        isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    ):
        raise P.ProtocolError("ota.apply: 'sha256' must be 64 lower-case hex digits")
    return size, digest


def _is_bundle(prefix: bytes | bytearray) -> bool:
    from ..ota.bundle import MAGIC

    return bytes(prefix[: len(MAGIC)]) == MAGIC


def peer_allowed(cred: PeerCred, *, owner_uid: int, group_gid: int | None) -> bool:
    if cred.uid in (0, owner_uid):
        return True
    if group_gid is None:
        return False
    return cred.gid == group_gid or group_gid in _supplementary_groups(cred.pid)


class ControlServer:
    def __init__(
        self,
        path: Path,
        target: ControlTarget,
        *,
        group_gid: int | None,
        record: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.target = target
        self.group_gid = group_gid
        self.owner_uid = os.getuid()
        self._record = record
        self._server: asyncio.AbstractServer | None = None
        self._last_refusal_record: dict[int, float] = {}
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self.refused = 0
        self.served = 0

    # -- socket setup -------------------------------------------------------------------------
    def _prepare(self) -> socket.socket:
        run_dir = self.path.parent
        try:
            if self.group_gid is not None:
                # group members must traverse (not list) the state directory to reach run/
                root = run_dir.parent
                st = os.stat(root)
                if st.st_gid != self.group_gid or not st.st_mode & 0o010:
                    os.chown(root, -1, self.group_gid)
                    os.chmod(root, stat.S_IMODE(st.st_mode) | 0o010)
            run_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
            os.chmod(run_dir, 0o750)
            if self.group_gid is not None:
                os.chown(run_dir, -1, self.group_gid)
        except OSError as exc:
            raise TransportError(f"cannot prepare {run_dir}: {exc.strerror or exc}") from None
        if self.path.exists() or self.path.is_symlink():
            st = os.lstat(self.path)
            if not stat.S_ISSOCK(st.st_mode):
                raise TransportError(f"{self.path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connect_unix(probe, self.path)
                raise TransportError(
                    f"another daemon is already serving {self.path}",
                    hint="stop it first, or use a different --state directory",
                )
            except (ConnectionRefusedError, FileNotFoundError):
                self.path.unlink(missing_ok=True)  # stale socket of a daemon that died
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            bind_unix(sock, self.path)  # the 0750 directory keeps others out until chmod below
            os.chmod(self.path, 0o660)
            if self.group_gid is not None:
                os.chown(self.path, -1, self.group_gid)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        sock = self._prepare()
        self._server = await asyncio.start_unix_server(self._on_connection, sock=sock, limit=P.MAX_LINE + 2)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conn_tasks):
                task.cancel()
            await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except OSError:
            pass

    # -- connections --------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        try:
            sock = writer.get_extra_info("socket")
            cred = peer_credentials(sock)
            if not peer_allowed(cred, owner_uid=self.owner_uid, group_gid=self.group_gid):
                await self._refuse(cred, reader, writer)
                return
            self.served += 1
            await self._serve(reader, writer, cred)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._conn_tasks.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError, RuntimeError):
                pass

    async def _refuse(self, cred: PeerCred, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.refused += 1
        log.warning(
            "control socket: refused uid %d gid %d pid %d (not the daemon's user, root, or in the control group)",
            cred.uid,
            cred.gid,
            cred.pid,
        )
        writer.write(
            P.encode_error(
                None,
                "forbidden",
                f"uid {cred.uid} may not use this control socket",
                "ask the device's owner to add you to the control group",
            )
        )
        try:
            await writer.drain()
            # Let the client finish sending its request before the socket closes, so that it reads
            # this refusal instead of failing its write with EPIPE (bounded: 64 KiB, half a second).
            if writer.can_write_eof():
                writer.write_eof()
            await asyncio.wait_for(reader.read(65536), 0.5)
        except (TimeoutError, ConnectionError, ValueError):
            pass
        now = time.monotonic()
        last = self._last_refusal_record.get(cred.uid)
        if self._record is not None and (last is None or now - last >= REFUSAL_RECORD_INTERVAL):
            self._last_refusal_record[cred.uid] = now
            try:
                await self._record(
                    "control.refused",
                    {"uid": cred.uid, "gid": cred.gid, "pid": cred.pid, "refused_total": self.refused},
                )
            except Exception as exc:
                log.error("could not record control.refused: %s", exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cred: PeerCred) -> None:
        upload = _Upload()  # this connection's ota.apply bytes so far (chunks with "more": true)
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                writer.write(P.encode_error(None, "bad_request", f"request longer than {P.MAX_LINE} bytes"))
                await writer.drain()
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                req = P.decode_request(line)
            except P.ProtocolError as exc:
                writer.write(P.encode_error(getattr(exc, "request_id", None), exc.code, exc.message, exc.hint))
                await writer.drain()
                continue
            await self._dispatch(req, writer, cred, upload)

    async def _dispatch(self, req: P.Request, writer: asyncio.StreamWriter, cred: PeerCred, upload: _Upload) -> None:
        t = self.target
        p = req.params
        try:
            if req.method in _ADMIN:
                result: Any = await self._admin(req, cred, upload)
            elif req.method == "call":
                action, args = p.get("action"), p.get("args", {})
                if not isinstance(action, str) or not isinstance(args, dict):
                    raise P.ProtocolError('call needs params {"action": NAME, "args": {...}}')
                result = await t.control_call(action, args, source=f"control:uid={cred.uid}")
            elif req.method == "status":
                result = t.control_status()
            elif req.method == "sim.drive":
                pin, value = p.get("pin"), p.get("value")
                if not isinstance(pin, str) or value not in (0, 1) or isinstance(value, bool):
                    raise P.ProtocolError('sim.drive needs params {"pin": NAME, "value": 0 or 1}')
                result = t.control_sim_drive(pin, value)
            elif req.method == "sim.list":
                result = t.control_sim_list()
            elif req.method == "reload":
                result = await t.control_reload()
            elif req.method == "ask":

                async def emit(event: dict[str, Any]) -> None:
                    writer.write(P.encode_event(req.id, event))
                    await writer.drain()

                result = await t.control_ask(p, source=f"ask:uid={cred.uid}", emit=emit)
            else:  # follow
                since = p.get("since_seq", 0)
                kind = p.get("kind")
                if (
                    isinstance(since, bool)
                    or not isinstance(since, int)
                    or since < 0
                    or (kind is not None and not isinstance(kind, str))
                ):
                    raise P.ProtocolError('follow takes params {"since_seq": N >= 0, "kind": KIND}')
                async for event in t.control_follow(since, kind):
                    writer.write(P.encode_event(req.id, event))
                    await writer.drain()
                result = {"end": True}
            writer.write(P.encode_result(req.id, result))
        except KestrelError as exc:
            code, extra = P.error_fields(exc)
            writer.write(P.encode_error(req.id, code, exc.message, exc.hint, **extra))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug must not take the socket down; it is logged in full
            log.exception("control request %s failed", req.method)
            writer.write(P.encode_error(req.id, "internal", f"internal error: {type(exc).__name__}: {exc}"))
        await writer.drain()

    async def _admin(self, req: P.Request, cred: PeerCred, upload: _Upload) -> Any:
        """Owner operations and peer messages (docs/control-protocol.md, "Methods")."""
        t, p = self.target, req.params
        if req.method == "ota.apply":
            more = p.get("more", False)
            if not isinstance(more, bool):
                raise P.ProtocolError("ota.apply: 'more' must be true or false")
            chunk = P.from_hex(p.get("data"), what="ota.apply 'data'")
            if not upload:
                upload.claim = _claimed(p)
            declared, digest = upload.claim
            size = max(declared or 0, len(upload) + len(chunk))
            if size > t.max_upload:
                upload.clear()
                await self._upload_refused(
                    cred,
                    "oversize",
                    f"bundle of {size} bytes is larger than ota.max_bundle ({t.max_upload} bytes)",
                    size=size,
                    sha256=digest,
                    hint="raise ota.max_bundle in the device config, or ship the model separately",
                )
            upload += chunk
            if len(upload) >= 8 and len(upload) - len(chunk) < 8 and not _is_bundle(upload):
                upload.clear()
                await self._upload_refused(
                    cred,
                    "bad-magic",
                    "not a Kestrel bundle (bad magic)",
                    size=size,
                    sha256=digest,
                    hint="build bundles with `kestrel bundle build`",
                )
            if more:
                return {"received": len(upload)}
            data = bytes(upload)
            upload.clear()
            return await t.control_ota_apply(data, source=f"control:uid={cred.uid}")
        if req.method == "ota.rollback":
            reason = p.get("reason", "operator")
            if not isinstance(reason, str) or not 0 < len(reason) <= 200:
                raise P.ProtocolError("ota.rollback: 'reason' must be a short string")
            return await t.control_ota_rollback(reason)
        if req.method == "trust.apply":
            return await t.control_trust_apply(P.from_hex(p.get("root"), what="trust.apply 'root'"))
        if req.method == "record":
            return await self._record_for(cred, p)
        timeout, limit = p.get("timeout", 0), p.get("max", 100)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 <= timeout <= 3600
            or isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= 1000
        ):
            raise P.ProtocolError('peer.receive takes params {"timeout": 0..3600 seconds, "max": 1..1000}')
        return await t.control_peer_receive(float(timeout), limit)

    async def _upload_refused(
        self, cred: PeerCred, code: str, message: str, *, size: int, sha256: str | None, hint: str
    ) -> None:
        """Refuse an ota.apply upload before it is buffered whole: recorded as ota.rejected, then raised."""
        from ..ota.errors import BundleFormatError

        if self._record is not None:
            try:
                await self._record(
                    "ota.rejected",
                    {
                        "reason": code,
                        "message": message[:500],
                        "sha256": sha256,
                        "size": size,
                        "source": f"control:uid={cred.uid}",
                    },
                )
            except Exception as exc:
                log.error("could not record ota.rejected: %s", exc)
        raise BundleFormatError(message, code=code, hint=hint)

    async def _record_for(self, cred: PeerCred, p: dict[str, Any]) -> dict[str, Any]:
        """``record``: a CLI command that did its own work (model install, memory add) records it here."""
        if cred.uid not in (0, self.owner_uid):
            raise _Forbidden(
                f"uid {cred.uid} may not write records into this agent's ledger",
                hint="run the command as the daemon's user (or root)",
            )
        kind, body = p.get("kind"), p.get("body")
        if kind not in P.RECORDABLE or not isinstance(body, dict):
            raise P.ProtocolError(f'record takes {{"kind": one of {sorted(P.RECORDABLE)}, "body": {{...}}}}')
        if self._record is None:
            raise KestrelError("this daemon cannot record")
        receipt = await self._record(kind, body)
        return {"seq": receipt.seq, "digest": receipt.digest, "time": receipt.time}


class _Forbidden(KestrelError):
    code = "forbidden"
    exit_code = 77


_ADMIN = frozenset({"ota.apply", "ota.rollback", "trust.apply", "peer.receive", "record"})

"""The local web UI (docs/ui.md): asyncio's own TCP server on the daemon's loop, token-authorised.

Every request is authorised by an owner-made token (``kestrel ui token``): sent as
``Authorization: Bearer TOKEN``, or exchanged once on the login form for a session cookie
(HttpOnly, SameSite=Strict); form posts of a session also carry its CSRF token. No token, no
page: 401. A wrong or expired token is refused and recorded as ``ui.refused`` (at most one
record per peer and reason per :data:`REFUSAL_RECORD_INTERVAL` seconds, the rest counted).
An action requested here goes through the daemon's pipeline exactly as ``kestrel call`` does
(``control_call``, source ``ui:token=ID``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..._internal.fsutil import read_bytes
from ..._internal.paths import StateLayout
from ...errors import KestrelError
from ..protocol import to_json_value
from . import pages
from .http import MAX_HEAD, HttpError, Request, Response, read_request, write_response
from .tokens import TokenCheck, TokenFile

if TYPE_CHECKING:
    from ...ledger import Ledger

__all__ = ["UiServer", "UiHost", "COOKIE"]

log = logging.getLogger("kestrel.daemon.ui")

COOKIE = "kestrel_ui"
MAX_CONNECTIONS = 16
MAX_SESSIONS = 32
IDLE_S = 30.0
REFUSAL_RECORD_INTERVAL = 10.0
EVENT_KINDS = frozenset({"policy.decision", "action.result"})
MAX_ARGS = 16 * 1024
MAX_POLICY_TEXT = 256 * 1024
_ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
STATIC = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


class UiHost(Protocol):
    """What the UI reads and asks of the daemon (implemented by :class:`kestrel.daemon.runtime.Daemon`)."""

    @property
    def ledger(self) -> Ledger: ...

    policy: Any
    state: StateLayout

    def control_status(self) -> dict[str, Any]: ...
    async def control_call(self, action: str, args: dict[str, Any], *, source: str) -> dict[str, Any]: ...
    async def record(self, kind: str, body: dict[str, Any]) -> Any: ...


@dataclass
class _Session:
    token_id: str
    expires: float
    csrf: str


@dataclass(frozen=True)
class _Auth:
    token_id: str
    session: _Session | None  # None: a Bearer request (no cookie, so no CSRF to check)


def _h(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _json(obj: Any, status: int = 200) -> Response:
    return Response(
        status, json.dumps(to_json_value(obj), separators=(",", ":")).encode(), content_type="application/json"
    )


def _redirect(to: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", content_type="text/plain", headers=[("Location", to), *headers])


class UiServer:
    def __init__(
        self,
        host: UiHost,
        *,
        listen_host: str,
        listen_port: int,
        session_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.session_s = session_s
        self.clock = clock
        self.tokens = TokenFile(host.state.root)
        self.sessions: dict[str, _Session] = {}  # sha256 of the cookie value -> session
        self.address: tuple[str, int] | None = None
        self.served = 0
        self.refused = 0
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._last_record: dict[tuple[str, str], float] = {}
        self._verify: dict[str, Any] = {"state": "not run"}
        self._verify_task: asyncio.Task[None] | None = None
        self._static: dict[str, bytes] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self.listen_host, self.listen_port, limit=MAX_HEAD, reuse_address=True
            )
        except OSError as exc:
            from ...errors import TransportError

            raise TransportError(
                f"the web UI cannot listen on {self.listen_host}:{self.listen_port}: {exc.strerror or exc}",
                hint="choose another ui.listen address in the device config, or stop what uses that port",
            ) from None
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("web UI on %s (token required: kestrel ui token)", self.url)

    @property
    def url(self) -> str:
        if self.address is None:
            return ""
        host, port = self.address
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        if self._verify_task is not None:
            self._verify_task.cancel()

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "served": self.served, "refused": self.refused, "sessions": len(self.sessions)}

    # -- connections -------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        if len(self._conns) >= MAX_CONNECTIONS:
            await self._turn_away(reader, writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                try:
                    req = await read_request(reader, peer=str(peer), idle_s=IDLE_S)
                except HttpError as exc:
                    await write_response(
                        writer, Response(exc.status, exc.message.encode(), "text/plain"), keep_alive=False
                    )
                    return
                if req is None:
                    return
                self.served += 1
                resp = await self._answer(req)
                await write_response(writer, resp, keep_alive=req.keep_alive, head_only=req.method == "HEAD")
                if not req.keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError, RuntimeError):
                pass

    @staticmethod
    async def _turn_away(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503 to a connection beyond :data:`MAX_CONNECTIONS` (its request read briefly, so the close is clean)."""
        try:
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
            )
            writer.write_eof()
            await asyncio.wait_for(reader.read(MAX_HEAD), 1.0)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _answer(self, req: Request) -> Response:
        try:
            return await self._handle(req)
        except HttpError as exc:
            return Response(exc.status, exc.message.encode(), "text/plain; charset=utf-8")
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug must not take the UI down; it is logged in full
            log.exception("web UI request %s %s failed", req.method, req.path)
            return Response(500, f"internal error: {type(exc).__name__}".encode(), "text/plain; charset=utf-8")

    # -- authorisation -----------------------------------------------------------------------
    def _check(self, token: str) -> TokenCheck:
        try:
            return self.tokens.check(token, now=self.clock())
        except KestrelError as exc:
            log.error("web UI token file: %s", exc.message)
            return TokenCheck(False, "token-file-unreadable")

    async def _refused(self, req: Request, reason: str, token_id: str | None) -> None:
        """Count, log and (rate-limited) record a refused token."""
        self.refused += 1
        log.warning("web UI: refused a token from %s (%s, token id %s)", req.peer, reason, token_id or "-")
        now = time.monotonic()
        key = (req.peer, reason)
        last = self._last_record.get(key)
        if last is not None and now - last < REFUSAL_RECORD_INTERVAL:
            return
        if len(self._last_record) >= 256:
            self._last_record = {k: t for k, t in self._last_record.items() if now - t < REFUSAL_RECORD_INTERVAL}
        self._last_record[key] = now
        try:
            await self.host.record(
                "ui.refused",
                {
                    "reason": reason,
                    "token": token_id,
                    "peer": req.peer,
                    "path": req.path[:200],
                    "refused_total": self.refused,
                },
            )
        except Exception as exc:
            log.error("could not record ui.refused: %s", exc)

    def _unauthorised(self, req: Request, *, message: str | None = None) -> Response:
        if req.path.startswith("/api/") or "authorization" in req.headers:
            resp = _json({"error": message or "a token is required (kestrel ui token)"}, 401)
        else:
            resp = Response(401, pages.login_page(message=message).encode())
        resp.headers.append(("WWW-Authenticate", 'Bearer realm="kestrel"'))
        return resp

    async def _authorise(self, req: Request) -> _Auth | Response:
        header = req.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            result = self._check(token) if scheme.lower() == "bearer" else TokenCheck(False, "malformed")
            if not result.ok:
                await self._refused(req, result.reason or "refused", result.id)
                return self._unauthorised(req, message=f"token refused ({result.reason})")
            assert result.id is not None
            return _Auth(result.id, None)
        sid = req.cookies().get(COOKIE)
        if sid:
            session = self.sessions.get(_h(sid))
            if session is not None and session.expires > self.clock() and session.token_id in self._live_token_ids():
                return _Auth(session.token_id, session)
            self.sessions.pop(_h(sid), None)
            return self._unauthorised(req, message="your session has ended: sign in again")
        return self._unauthorised(req)

    def _live_token_ids(self) -> set[str]:
        """Ids of the tokens still valid (a revoked or expired token ends its sessions)."""
        try:
            now = self.clock()
            return {e.id for e in self.tokens.entries().values() if e.expires > now}
        except KestrelError:
            return set()

    @staticmethod
    def _same_origin(req: Request) -> bool:
        """A browser's cross-site POST carries a foreign Origin (or Sec-Fetch-Site): refuse those."""
        origin = req.headers.get("origin")
        if origin is not None and origin != f"http://{req.headers.get('host', '')}":
            return False
        return req.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")

    def _csrf_ok(self, auth: _Auth, form: dict[str, str]) -> bool:
        if auth.session is None:
            return True  # Bearer: nothing a foreign page could make a browser send
        return hmac.compare_digest(form.get("csrf", ""), auth.session.csrf)

    async def _login(self, req: Request) -> Response:
        if not self._same_origin(req):
            return Response(403, b"cross-site sign-in refused", "text/plain")
        result = self._check(req.form().get("token", ""))
        if not result.ok:
            await self._refused(req, result.reason or "refused", result.id)
            why = "the token has expired" if result.reason == "expired" else "this is not a valid token"
            return self._unauthorised(req, message=f"Refused: {why}.")
        assert result.id is not None and result.expires is not None
        now = self.clock()
        self.sessions = {k: s for k, s in self.sessions.items() if s.expires > now}
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].expires)]
        sid = secrets.token_urlsafe(32)
        expires = min(result.expires, now + self.session_s)
        self.sessions[_h(sid)] = _Session(result.id, expires, secrets.token_urlsafe(24))
        try:
            await self.host.record("ui.login", {"token": result.id, "peer": req.peer, "expires": expires})
        except Exception as exc:
            log.error("could not record ui.login: %s", exc)
        cookie = f"{COOKIE}={sid}; Path=/; Max-Age={max(1, int(expires - now))}; HttpOnly; SameSite=Strict"
        return _redirect("/", ("Set-Cookie", cookie))

    # -- routes ------------------------------------------------------------------------------
    async def _handle(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD", "POST"):
            return Response(405, b"method not allowed", "text/plain", headers=[("Allow", "GET, HEAD, POST")])
        if req.path == "/login" and req.method == "POST":
            return await self._login(req)
        auth = await self._authorise(req)
        if isinstance(auth, Response):
            return auth
        if req.method == "POST":
            if not self._same_origin(req):
                return Response(403, b"cross-site request refused", "text/plain")
            form = req.form()
            if not self._csrf_ok(auth, form):
                return Response(
                    403, b"the form is stale or forged (CSRF token mismatch): reload the page", "text/plain"
                )
            return await self._post(req, auth, form)
        return await self._get(req, auth)

    async def _get(self, req: Request, auth: _Auth) -> Response:
        path, csrf = req.path, auth.session.csrf if auth.session else ""
        if path.startswith("/static/"):
            return self._static_file(path[len("/static/") :])
        if path == "/":
            return self._page(
                "Health and sensors", path, pages.health_page(self.host.control_status()), csrf, live="status"
            )
        if path == "/actions":
            events, nxt = await self._events(None)
            return self._page(
                "Actions and decisions", path, pages.actions_page(events, next_seq=nxt), csrf, live="events"
            )
        if path == "/policy":
            return self._page("Policy", path, await self._policy(), csrf)
        if path == "/ledger":
            if self._verify["state"] == "not run":
                self._start_verify()
            return self._page(
                "Ledger",
                path,
                pages.ledger_page(self._verify, self._checkpoint(), size=self.host.ledger.size, csrf=csrf),
                csrf,
                live="ledger",
            )
        if path == "/request":
            return self._page("Request an action", path, pages.request_page(csrf=csrf), csrf)
        if path == "/api/status":
            return _json(self.host.control_status())
        if path == "/api/events":
            since = req.query.get("since")
            if since is not None and not since.isdigit():
                raise HttpError(400, "since must be a sequence number")
            events, nxt = await self._events(int(since) if since else None)
            return _json({"events": events, "next": nxt})
        if path == "/api/ledger":
            return _json({"verify": self._verify, "checkpoint": self._checkpoint(), "size": self.host.ledger.size})
        return Response(404, b"not found", "text/plain")

    async def _post(self, req: Request, auth: _Auth, form: dict[str, str]) -> Response:
        if req.path == "/logout":
            if auth.session is not None:
                self.sessions = {k: s for k, s in self.sessions.items() if s is not auth.session}
            return _redirect("/", ("Set-Cookie", f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"))
        if req.path == "/ledger/verify":
            self._start_verify()
            return _redirect("/ledger")
        if req.path == "/request":
            status, body = await self._request_action(form, auth)
            csrf = auth.session.csrf if auth.session else ""
            resp = self._page("Request an action", "/request", body, csrf)
            resp.status = status
            return resp
        return Response(404, b"not found", "text/plain")

    def _page(self, title: str, path: str, body: str, csrf: str, *, live: str | None = None) -> Response:
        return Response(200, pages.layout(title, path, body, csrf=csrf or None, live=live).encode())

    def _static_file(self, name: str) -> Response:
        ctype = STATIC.get(name)
        if ctype is None:
            return Response(404, b"not found", "text/plain")
        data = self._static.get(name)
        if data is None:
            data = self._static[name] = (Path(__file__).parent / "static" / name).read_bytes()
        return Response(200, data, ctype)

    # -- the action form ---------------------------------------------------------------------
    async def _request_action(self, form: dict[str, str], auth: _Auth) -> tuple[int, str]:
        action, text = form.get("action", "").strip(), form.get("args", "").strip() or "{}"
        csrf = auth.session.csrf if auth.session else ""

        def bad(message: str) -> tuple[int, str]:
            return 400, pages.request_page(
                csrf=csrf, outcome={"kind": "failed", "message": message}, action=action, args=text
            )

        if not _ACTION.fullmatch(action) or len(action) > 64:
            return bad("choose an action (a name like gpio.write)")
        if len(text) > MAX_ARGS:
            return bad(f"the arguments are longer than {MAX_ARGS} bytes")
        try:
            args = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            return bad(f"the arguments are not JSON: {exc}")
        if not isinstance(args, dict):
            return bad('the arguments must be a JSON object, e.g. {"actuator": "lamp", "value": 1}')
        try:
            result = await self.host.control_call(action, args, source=f"ui:token={auth.token_id}")
            outcome: dict[str, Any] = {"kind": "allowed", "result": to_json_value(result)}
        except KestrelError as exc:
            if getattr(exc, "code", None) == "denied":
                decision = getattr(exc, "decision", None) or {}
                outcome = {
                    "kind": "denied",
                    "rule": decision.get("rule"),
                    "reason": decision.get("reason") or exc.message,
                }
            else:
                outcome = {"kind": "failed", "message": exc.message}
        return 200, pages.request_page(csrf=csrf, outcome=outcome, action=action, args=text)

    # -- data --------------------------------------------------------------------------------
    async def _events(self, since: int | None) -> tuple[list[dict[str, Any]], int]:
        """Decisions and outcomes from ``since`` (default: the last 300 records), at most 100 per call."""
        ledger = self.host.ledger
        if since is None:
            since = max(getattr(ledger, "first_seq", 0), ledger.size - 300)

        def read() -> tuple[list[dict[str, Any]], int]:
            out, nxt, scanned = [], since, 0
            for rec in ledger.records(since_seq=since):
                nxt, scanned = rec.seq + 1, scanned + 1
                if rec.kind in EVENT_KINDS:
                    out.append({"seq": rec.seq, "time": rec.time, "kind": rec.kind, "body": to_json_value(rec.body)})
                if len(out) >= 100 or scanned >= 2000:
                    break
            return out, nxt

        return await asyncio.get_running_loop().run_in_executor(None, read)

    def _checkpoint(self) -> dict[str, Any] | None:
        cp = self.host.ledger.latest_checkpoint()
        if cp is None:
            return None
        return {
            "size": cp.size,
            "root": cp.root.hex(),
            "origin": cp.origin,
            "note": cp.note.decode("utf-8", errors="replace"),
        }

    def _start_verify(self) -> None:
        if self._verify_task is not None and not self._verify_task.done():
            return
        self._verify = {"state": "running", "started_at": self.clock()}
        self._verify_task = asyncio.get_running_loop().create_task(self._run_verify(), name="ui-verify")

    async def _run_verify(self) -> None:
        t0 = time.monotonic()
        try:
            v = await asyncio.get_running_loop().run_in_executor(None, self.host.ledger.verify)
            self._verify = {
                "state": "ok",
                "size": v.size,
                "signed_size": v.signed_size,
                "root": v.root.hex(),
                "first_seq": v.first_seq,
                "checked_at": self.clock(),
                "seconds": round(time.monotonic() - t0, 3),
            }
        except KestrelError as exc:
            self._verify = {"state": "failed", "error": exc.message, "checked_at": self.clock()}
        except Exception as exc:
            log.exception("ledger verification from the web UI failed")
            self._verify = {"state": "failed", "error": f"{type(exc).__name__}: {exc}", "checked_at": self.clock()}

    async def _policy(self) -> str:
        engine = self.host.policy
        active = getattr(engine, "policy", None)
        info = {
            "loaded": active is not None,
            "digest": getattr(active, "digest", None),
            "error": getattr(engine, "load_error", None),
        }
        state_root = self.host.state.root
        source = getattr(active, "source", None)

        def read() -> tuple[dict[str, Any], str | None, str | None]:
            from ...ota.apply import ota_status

            ota = ota_status(state_root, now=self.clock())
            if source is None:
                return ota, None, "no policy is installed: every action is denied (default-deny)"
            try:
                data = read_bytes(source, what="policy", max_size=MAX_POLICY_TEXT)
            except KestrelError as exc:
                return ota, None, exc.message
            digest = str(info["digest"] or "")
            ok = hashlib.sha256(data).hexdigest() == digest.split(":", 1)[-1]
            note = None if ok else "this file does not match the digest of the policy in force"
            return ota, data.decode("utf-8", errors="replace"), note

        ota, text, note = await asyncio.get_running_loop().run_in_executor(None, read)
        return pages.policy_page(engine=info, ota=ota, text=text, text_note=note)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")

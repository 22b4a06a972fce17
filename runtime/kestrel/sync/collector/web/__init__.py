"""``kestrel collector serve``: a read-only web view of the fleet (Starlette + uvicorn; the ``collector`` extra).

Pages: the fleet list, an agent's log (filters by kind, seq and time; an inclusion proof to
download for every verified record), a record, an agent's fork evidence, and records-per-hour
plots drawn as SVG on the server. GET only; no script. Loopback by default; any other address
needs a token (``Authorization: Bearer``, or ``?token=`` once, which sets an HttpOnly cookie).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from ..store import AgentSummary, CollectorStore, LogFilter

__all__ = ["create_app", "is_loopback", "PAGE_SIZE"]

PAGE_SIZE = 100
COOKIE = "kestrel_collector_token"
_PLOTTED = 8
_DID = re.compile(r"did:key:z[1-9A-HJ-NP-Za-km-z]{20,200}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _utc(t: float | None) -> str:
    if not t:
        return "—"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _note(note: bytes | None) -> str:
    return "—" if note is None else note.decode("utf-8", errors="replace")


class _BadQuery(ValueError):
    pass


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    if not value.isdigit() or len(value) > 18:
        raise _BadQuery(f"{name} must be a whole number, not {value!r}")
    return int(value)


def _time(value: str | None, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise _BadQuery(f"{name} must be a date and time like 2026-12-05T14:00, not {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def create_app(store: CollectorStore, *, token: str | None = None, location: str = "") -> Any:
    """The ASGI application over ``store`` (read-only). ``token``: required on every request."""
    from jinja2 import DictLoader, Environment, select_autoescape
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route

    from ....identity.keys import KeyFormatError, PublicKey
    from ....ledger.errors import RecordError
    from ....ledger.record import decode_record
    from .plot import hourly_svg
    from .templates import STYLE, TEMPLATES

    env = Environment(loader=DictLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["utc"] = _utc
    env.filters["note"] = _note
    base_ctx = {"root": "/", "location": location}

    def page(name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**base_ctx, **ctx), status_code=code)

    def error(status: int, message: str) -> HTMLResponse:
        return page(
            "error.html",
            status,
            status={400: "Bad request", 401: "Token required", 404: "Not found"}.get(status, str(status)),
            message=message,
        )

    def names() -> dict[str, str]:
        out: dict[str, str] = {}
        for did, raw in store.records_of_kind("agent.created"):
            try:
                name = decode_record(raw).body.get("name")
            except RecordError:
                continue
            if isinstance(name, str) and name:
                out.setdefault(did, name[:80])
        return out

    def summary(did: str) -> AgentSummary | None:
        found = store.summaries(did)
        return found[0] if found else None

    def agent_did(request: Request) -> str | None:
        did = request.path_params["did"]
        if not _DID.fullmatch(did):
            return None
        try:
            PublicKey.from_did(did)
        except KeyFormatError:
            return None
        return did

    def fleet(request: Request) -> Response:
        agents = store.summaries()
        totals = {
            "agents": len(agents),
            "records": sum(a.records for a in agents),
            "pending": sum(a.pending for a in agents),
            "forked": sum(1 for a in agents if a.forks),
        }
        top = sorted(agents, key=lambda a: (-a.records, a.did))[:_PLOTTED]
        series: dict[str, list[tuple[int, int]]] = {a.did: [] for a in top}
        for did, hour, n in store.hourly():
            if did in series:
                series[did].append((hour, n))
        plot = hourly_svg({f"{d[:16]}…{d[-6:]}": v for d, v in series.items()}, title="records per hour per agent")
        return page("fleet.html", agents=agents, totals=totals, names=names(), plot=plot, plotted=len(top))

    def agent(request: Request) -> Response:
        did = agent_did(request)
        s = summary(did) if did else None
        if did is None or s is None:
            return error(404, "no such agent in this collector's database")
        q = request.query_params
        err, rows, after = None, [], -1
        flt = LogFilter()
        try:
            after = _int(q.get("after"), "after") or -1
            kind = (q.get("kind") or "").strip() or None
            if kind is not None and not re.fullmatch(r"[a-z0-9_.*-]{1,64}", kind):
                raise _BadQuery("kind may hold only a-z, 0-9 and _ . * -")
            flt = LogFilter(
                kind,
                _int(q.get("seq_min"), "seq from"),
                _int(q.get("seq_max"), "seq to"),
                _time(q.get("since"), "since"),
                _time(q.get("until"), "until"),
            )
            rows = store.log(did, flt, after=after, limit=PAGE_SIZE)
        except _BadQuery as exc:
            err = str(exc)
        next_after = rows[-1].seq if len(rows) == PAGE_SIZE else None
        params = {k: v for k, v in q.items() if k != "after" and v}
        next_url = f"/agents/{did}?" + urlencode({**params, "after": next_after}) if next_after is not None else ""
        kinds = sorted({r.kind for r in store.log(did, LogFilter(), limit=500)})
        plot = hourly_svg({did: [(h, n) for _, h, n in store.hourly(did)]}, title="records per hour")
        return page(
            "agent.html",
            400 if err else 200,
            did=did,
            s=s,
            names=names(),
            rows=rows,
            f=flt,
            q=dict(q),
            error=err,
            after=after,
            next_after=next_after,
            next_url=next_url,
            limit=PAGE_SIZE,
            kinds=kinds,
            plot=plot,
        )

    def record(request: Request) -> Response:
        did = agent_did(request)
        raw = store.record(did, request.path_params["seq"]) if did else None
        if raw is None:
            return error(404, "no such record stored")
        try:
            body = json.dumps(decode_record(raw).to_json(), indent=2, sort_keys=True)
        except RecordError as exc:
            body = f"(the stored bytes do not decode: {exc.message})"
        return page("record.html", did=did, seq=request.path_params["seq"], body=body)

    def proof(request: Request) -> Response:
        from ....errors import KestrelError
        from ..evidence import proof_file

        did = agent_did(request)
        if did is None:
            return error(404, "no such agent")
        seq = request.path_params["seq"]
        try:
            data = proof_file(store, did, seq)
        except KestrelError as exc:
            return error(404, exc.message)
        name = f"{did.rsplit(':', 1)[-1][:16]}-{seq}.proof"
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def forks(request: Request) -> Response:
        did = agent_did(request)
        if did is None or summary(did) is None:
            return error(404, "no such agent in this collector's database")
        return page("forks.html", did=did, forks=store.forks(did), rejections=store.rejections(did)[-200:])

    def style(request: Request) -> Response:
        return Response(STYLE, media_type="text/css")

    routes = [
        Route("/", fleet),
        Route("/style.css", style),
        Route("/agents/{did}", agent),
        Route("/agents/{did}/forks", forks),
        Route("/agents/{did}/records/{seq:int}", record),
        Route("/agents/{did}/records/{seq:int}/proof", proof),
    ]
    app = Starlette(routes=routes)
    return _Guard(
        app,
        token=token,
        unauthorized=lambda: error(
            401, "this view needs its token: open it with ?token=... once, or send Authorization: Bearer"
        ),
        redirect=RedirectResponse,
    )


class _Guard:
    """ASGI middleware: the token check, and security headers on every response."""

    HEADERS = [
        (
            b"content-security-policy",
            b"default-src 'none'; style-src 'self'; img-src 'self' data:; "
            b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cache-control", b"no-store"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: Any, *, token: str | None, unauthorized: Any, redirect: Any) -> None:
        self.app, self.token = app, token
        self._unauthorized, self._redirect = unauthorized, redirect

    def _ok(self, supplied: str | None) -> bool:
        return (
            supplied is not None
            and self.token is not None
            and hmac.compare_digest(supplied.encode(), self.token.encode())
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.HEADERS}
            await send(message)

        if self.token is not None:
            from starlette.requests import Request

            request = Request(scope)
            auth = request.headers.get("authorization", "")
            bearer = auth[7:] if auth.lower().startswith("bearer ") else None
            query = request.query_params.get("token")
            if self._ok(query):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = scope["path"] + ("?" + urlencode(rest) if rest else "")
                response = self._redirect(target, status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
                return await response(scope, receive, send_with_headers)
            if not (self._ok(bearer) or self._ok(request.cookies.get(COOKIE))):
                response = self._unauthorized()
                response.headers["www-authenticate"] = "Bearer"
                return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

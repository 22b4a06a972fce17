"""The UI's HTML, rendered on the server from plain data (pure: dicts in, text out).

Every value is escaped; pages carry no inline script or style (the Content-Security-Policy
allows only /static/app.js and /static/style.css). Elements that app.js keeps live have
``data-*`` attributes; the tests read them too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "login_page",
    "layout",
    "health_page",
    "actions_page",
    "policy_page",
    "ledger_page",
    "request_page",
    "event_row",
    "ACTIONS",
]

ACTIONS = ("gpio.write", "send_email", "schedule_event", "fetch_data", "mqtt.publish", "serial.write", "agent.send")
NAV = (
    ("/", "Health"),
    ("/actions", "Actions"),
    ("/policy", "Policy"),
    ("/ledger", "Ledger"),
    ("/request", "Request an action"),
)


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})


def _e(value: Any) -> str:
    """Text for HTML content and quoted attributes (what html.escape does, without its 0.2 MB entity table)."""
    return ("" if value is None else str(value)).translate(_ESCAPES)


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def login_page(*, message: str | None = None) -> str:
    note = f'<p class="refused" id="login-error" role="alert">{_e(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kestrel: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body id="login">
<h1>Kestrel</h1>
<p>This device's web UI needs an access token. The owner creates one on the device with
<code>kestrel ui token</code>.</p>
{note}
<form method="post" action="/login">
<label>Access token <input type="password" name="token" id="token" autocomplete="off" required></label>
<button type="submit" id="sign-in">Sign in</button>
</form>
</body></html>"""


def layout(title: str, active: str, body: str, *, csrf: str | None, live: str | None = None) -> str:
    nav = " ".join(f'<a href="{href}"{" class=active" if href == active else ""}>{_e(name)}</a>' for href, name in NAV)
    logout = (
        (
            f'<form method="post" action="/logout" class="logout"><input type="hidden" name="csrf" '
            f'value="{_e(csrf)}"><button type="submit">Sign out</button></form>'
        )
        if csrf
        else ""
    )
    live_attr = f' data-live="{_e(live)}"' if live else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kestrel: {_e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"><script src="/static/app.js" defer></script></head>
<body{live_attr}>
<header><strong>Kestrel</strong> <nav>{nav}</nav>{logout}</header>
<main><h1>{_e(title)}</h1>
{body}
</main></body></html>"""


def _table(head: Iterable[str], rows: Iterable[str], *, tid: str, attrs: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table id="{tid}"{attrs}><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def health_page(st: Mapping[str, Any]) -> str:
    health = st.get("health", "?")
    sensors = st.get("sensors") or {}
    values = st.get("values") or {}
    rows = []
    for name in sorted(set(sensors) | set(values)):
        if name.startswith("_"):
            continue
        info = sensors.get(name) or {}
        rows.append(
            f'<tr data-sensor="{_e(name)}"><td>{_e(name)}</td><td>{_e(info.get("type", ""))}</td>'
            f'<td class="state">{_e(info.get("state", ""))}</td>'
            f'<td class="value">{_e(_value(values.get(name, "")))}</td></tr>'
        )
    acts = [
        f'<tr data-actuator="{_e(n)}"><td>{_e(n)}</td><td class="value">{_e(_value(v))}</td></tr>'
        for n, v in sorted((st.get("actuators") or {}).items())
    ]
    counters = st.get("actions") or {}
    ledger = st.get("ledger") or {}
    return f"""<section><p>Health: <span id="health" class="{"ok" if health == "ok" else "bad"}">{_e(health)}</span>
 · up <span id="uptime">{_e(st.get("uptime_s"))}</span> s · board {_e(st.get("board"))}</p>
<p>Agent <code id="agent">{_e(st.get("agent"))}</code></p></section>
<h2>Sensors</h2>
{_table(("sensor", "type", "state", "value"), rows, tid="sensors")}
<h2>Actuators</h2>
{_table(("actuator", "value"), acts, tid="actuators")}
<h2>Actions</h2>
<p id="counters">{
        " · ".join(f"{_e(k)} <span data-counter='{_e(k)}'>{_e(v)}</span>" for k, v in sorted(counters.items()))
    }</p>
<p>Ledger: <span id="ledger-size">{_e(ledger.get("size"))}</span> records,
<span id="ledger-signed">{_e(ledger.get("signed"))}</span> under a signed checkpoint.</p>"""


def event_row(ev: Mapping[str, Any]) -> str:
    """One ``policy.decision`` or ``action.result`` record as a table row (app.js builds the same)."""
    body = ev.get("body") or {}
    if ev.get("kind") == "policy.decision":
        outcome, cls = body.get("decision", "?"), "deny" if body.get("decision") == "deny" else "allow"
        detail = body.get("reason", "")
        rule = body.get("rule", "")
    else:
        ok = body.get("ok")
        outcome, cls = ("ok" if ok else "failed"), ("allow" if ok else "deny")
        err = body.get("error") or {}
        detail = err.get("message", "") if isinstance(err, dict) else str(err)
        rule = ""
    seq = _e(ev.get("seq"))
    return (
        f'<tr data-seq="{seq}" class="{cls}"><td>{seq}</td><td>{_e(_when(ev.get("time")))}</td>'
        f'<td>{_e(ev.get("kind"))}</td><td>{_e(body.get("action"))}</td><td class="outcome">{_e(outcome)}</td>'
        f'<td class="rule">{_e(rule)}</td><td>{_e(body.get("source", ""))}</td><td>{_e(detail)}</td></tr>'
    )


def actions_page(events: Sequence[Mapping[str, Any]], *, next_seq: int) -> str:
    rows = [event_row(ev) for ev in reversed(events)]
    return f"""<p>Every proposed action's decision (<code>policy.decision</code>, with the rule that decided) and
outcome (<code>action.result</code>), newest first, as the ledger records them.</p>
{
        _table(
            ("seq", "time (UTC)", "record", "action", "outcome", "rule", "source", "reason / error"),
            rows,
            tid="events",
            attrs=f' data-next="{next_seq}"',
        )
    }"""


def policy_page(*, engine: Mapping[str, Any], ota: Mapping[str, Any], text: str | None, text_note: str | None) -> str:
    active = ota.get("active") or {}
    prev = ota.get("previous") or {}
    root = ota.get("trust_root") or {}

    def slot(s: Mapping[str, Any]) -> str:
        if not s:
            return "none"
        if s.get("error"):
            return f'slot {_e(s.get("slot"))}: <span class="bad">{_e(s["error"])}</span>'
        return (
            f"slot {_e(s.get('slot'))}, bundle <code>{_e(s.get('bundle'))}</code>, version {_e(s.get('version'))}, "
            f"counter {_e(s.get('counter'))}{' (expired)' if s.get('expired') else ''}, "
            f"contents {_e(', '.join(s.get('contents') or []))}"
        )

    loaded = engine.get("loaded")
    in_force = "loaded" if loaded else "none: every action is denied"
    return f"""<section>
<p>Policy in force: <span id="policy-state" class="{"ok" if loaded else "bad"}">{in_force}</span>
{f'<span class="bad">({_e(engine.get("error"))})</span>' if engine.get("error") else ""}</p>
<p>Policy digest <code id="policy-digest">{_e(engine.get("digest"))}</code></p>
<p>Active bundle: <span id="bundle">{slot(active)}</span></p>
<p>Previous bundle: {slot(prev)}</p>
<p>Security counter {_e(ota.get("counter"))}; trust root version {_e(root.get("version"))},
threshold {_e(root.get("threshold"))} of {_e(len(root.get("owners") or []))} owner key(s).</p>
</section>
<h2>Policy source</h2>
{f'<p class="note">{_e(text_note)}</p>' if text_note else ""}
<pre id="policy-text">{_e(text or "")}</pre>"""


def ledger_page(verify: Mapping[str, Any], checkpoint: Mapping[str, Any] | None, *, size: int, csrf: str) -> str:
    state = verify.get("state", "not run")
    cls = {"ok": "ok", "failed": "bad"}.get(state, "")
    cp = (
        f"""<p>Size <span id="cp-size">{_e(checkpoint["size"])}</span>,
root <code id="cp-root">{_e(checkpoint["root"])}</code></p>
<pre id="cp-note">{_e(checkpoint["note"])}</pre>"""
        if checkpoint
        else '<p id="cp-size">no signed checkpoint yet</p>'
    )
    return f"""<section>
<p>Records: <span id="ledger-size">{_e(size)}</span></p>
<p>Verification: <span id="verify-state" class="{cls}">{_e(state)}</span>
<span id="verify-detail">{_e(_verify_detail(verify))}</span></p>
<form method="post" action="/ledger/verify"><input type="hidden" name="csrf" value="{_e(csrf)}">
<button type="submit" id="verify-now">Verify now</button></form>
</section>
<h2>Latest signed checkpoint</h2>
{cp}"""


def _verify_detail(v: Mapping[str, Any]) -> str:
    if v.get("state") == "ok":
        return (
            f"{v.get('size')} records verified (chain, tree, checkpoint signatures), {v.get('signed_size')} "
            f"under a signed checkpoint, at {_when(v.get('checked_at'))} in {v.get('seconds')} s"
        )
    if v.get("state") == "failed":
        return f"{v.get('error')} (at {_when(v.get('checked_at'))})"
    return ""


def request_page(*, csrf: str, outcome: Mapping[str, Any] | None = None, action: str = "", args: str = "{}") -> str:
    options = "".join(f"<option{' selected' if a == action else ''}>{_e(a)}</option>" for a in ACTIONS)
    box = ""
    if outcome is not None:
        kind = outcome["kind"]  # allowed | denied | failed
        if kind == "denied":
            inner = (
                f'<strong>Denied</strong> by rule <code id="outcome-rule">{_e(outcome.get("rule"))}</code>: '
                f'<span id="outcome-reason">{_e(outcome.get("reason"))}</span>'
            )
        elif kind == "allowed":
            result = _e(_value(outcome.get("result")))
            inner = f'<strong>Allowed</strong> and done: <code id="outcome-result">{result}</code>'
        else:
            inner = f'<strong>Failed</strong>: <span id="outcome-reason">{_e(outcome.get("message"))}</span>'
        box = f'<div id="outcome" class="outcome {kind}" role="status">{inner}</div>'
    return f"""<p>The request goes through the daemon's policy pipeline, like <code>kestrel call</code>: the policy
decides, the decision and the outcome are recorded in the ledger.</p>
{box}
<form method="post" action="/request" id="request-form">
<input type="hidden" name="csrf" value="{_e(csrf)}">
<label>Action <select name="action" id="action">{options}</select></label>
<label>Arguments (JSON object) <textarea name="args" id="args" rows="5" cols="60">{_e(args)}</textarea></label>
<button type="submit" id="submit">Request</button>
</form>"""

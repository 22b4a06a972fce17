"""The fleet view's pages (Jinja2, autoescaped) and its style sheet. No script: links and forms only,
so every page works by keyboard (a skip link first, visible focus, labelled form fields)."""

from __future__ import annotations

STYLE = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1b1b1b; background: #f6f7f9; }
header { background: #14213d; color: #fff; padding: 10px 24px; }
header a { color: #fff; }
main { padding: 16px 24px; }
a { color: #0b57d0; }
a:focus, button:focus, input:focus, select:focus, summary:focus { outline: 3px solid #f4b400; outline-offset: 2px; }
.skip { position: absolute; left: -9999px; }
.skip:focus { left: 8px; top: 8px; background: #fff; color: #000; padding: 6px; z-index: 9; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 16px; }
th, td { border: 1px solid #d0d4da; padding: 4px 8px; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.did { font-family: ui-monospace, monospace; font-size: 13px; }
.forked { background: #b3261e; color: #fff; font-weight: bold; padding: 1px 6px; border-radius: 3px; }
.ok { color: #1b6e2e; }
.totals { display: flex; gap: 24px; flex-wrap: wrap; margin: 8px 0 16px; }
.totals div { background: #fff; border: 1px solid #d0d4da; padding: 8px 14px; }
.totals b { display: block; font-size: 22px; }
form.filters { background: #fff; border: 1px solid #d0d4da; padding: 8px 12px; display: flex; gap: 12px;
  flex-wrap: wrap; align-items: end; }
form.filters label { display: flex; flex-direction: column; font-size: 13px; }
pre { background: #fff; border: 1px solid #d0d4da; padding: 8px; white-space: pre-wrap; word-break: break-all; }
.error { background: #fde8e6; border: 1px solid #b3261e; padding: 8px 12px; }
figure { margin: 8px 0 16px; }
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Kestrel fleet{% endblock %}</title><link rel="stylesheet" href="{{ root }}style.css"></head>
<body><a class="skip" href="#main">Skip to content</a>
<header><nav aria-label="site"><a href="{{ root }}"><strong>Kestrel fleet</strong></a> · read-only view of
<span>{{ location }}</span></nav></header>
<main id="main" tabindex="-1">{% block main %}{% endblock %}</main></body></html>
"""

FLEET = """{% extends "base.html" %}{% block main %}
<h1>Fleet</h1>
<section class="totals" aria-label="fleet totals">
<div>agents<b id="total-agents">{{ totals.agents }}</b></div>
<div>records stored<b id="total-records">{{ totals.records }}</b></div>
<div>pending<b id="total-pending">{{ totals.pending }}</b></div>
<div>forked agents<b id="total-forked">{{ totals.forked }}</b></div>
</section>
<figure>{{ plot|safe }}<figcaption>Records per hour, the {{ plotted }} agents with the most records.</figcaption></figure>
<table id="fleet"><caption>Agents ({{ agents|length }})</caption>
<thead><tr><th scope="col">AgentID</th><th scope="col">name</th><th scope="col">last seen (UTC)</th>
<th scope="col" class="num">records</th><th scope="col" class="num">verified up to</th>
<th scope="col" class="num">pending</th><th scope="col" class="num">forks</th></tr></thead>
<tbody>{% for a in agents %}
<tr data-did="{{ a.did }}"><td class="did"><a href="{{ root }}agents/{{ a.did }}">{{ a.did }}</a></td>
<td>{{ names.get(a.did, "—") }}</td><td>{{ a.last_seen|utc }}</td>
<td class="num" data-col="records">{{ a.records }}</td><td class="num" data-col="verified">{{ a.verified }}</td>
<td class="num" data-col="pending">{{ a.pending }}</td>
<td class="num" data-col="forks">{% if a.forks %}<a class="forked" href="{{ root }}agents/{{ a.did }}/forks">{{ a.forks }}</a>{% else %}0{% endif %}</td></tr>
{% else %}<tr><td colspan="7">no agents yet</td></tr>{% endfor %}</tbody></table>
{% endblock %}"""

AGENT = """{% extends "base.html" %}{% block title %}{{ did }} · Kestrel fleet{% endblock %}{% block main %}
<h1>Agent <span class="did">{{ did }}</span></h1>
<p>{% if names.get(did) %}Name: {{ names[did] }} · {% endif %}records stored <b id="agent-records">{{ s.records }}</b> ·
verified up to <b id="agent-verified">{{ s.verified }}</b> · pending <b id="agent-pending">{{ s.pending }}</b> ·
refused <b>{{ s.rejections }}</b> · last seen {{ s.last_seen|utc }}
{% if s.base %} · verified from the agent's signed base at <b>{{ s.base }}</b> (it pruned records before they were synced){% endif %}</p>
{% if s.forks %}<p><a class="forked" href="{{ root }}agents/{{ did }}/forks">FORKED: {{ s.forks }} piece(s) of fork evidence</a></p>
{% else %}<p class="ok">No fork evidence.</p>{% endif %}
<figure>{{ plot|safe }}<figcaption>Records per hour of this agent.</figcaption></figure>
<h2 id="log-heading">Log</h2>
<form class="filters" method="get" action="{{ root }}agents/{{ did }}" aria-labelledby="log-heading">
<label>kind (exact, or a prefix ending in “.”)<input name="kind" value="{{ f.kind or '' }}" list="kinds"></label>
<datalist id="kinds">{% for k in kinds %}<option value="{{ k }}">{% endfor %}</datalist>
<label>seq from<input name="seq_min" inputmode="numeric" value="{{ q.seq_min or '' }}" size="8"></label>
<label>seq to<input name="seq_max" inputmode="numeric" value="{{ q.seq_max or '' }}" size="8"></label>
<label>since (UTC)<input type="datetime-local" name="since" value="{{ q.since or '' }}"></label>
<label>until (UTC)<input type="datetime-local" name="until" value="{{ q.until or '' }}"></label>
<button type="submit">Filter</button> <a href="{{ root }}agents/{{ did }}">clear</a></form>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<table id="log"><caption>{{ rows|length }} record(s){% if after >= 0 %} after seq {{ after }}{% endif %}</caption>
<thead><tr><th scope="col" class="num">seq</th><th scope="col">time (UTC)</th><th scope="col">kind</th>
<th scope="col" class="num">bytes</th><th scope="col">stored (UTC)</th><th scope="col">inclusion proof</th></tr></thead>
<tbody>{% for r in rows %}<tr data-seq="{{ r.seq }}"><td class="num"><a href="{{ root }}agents/{{ did }}/records/{{ r.seq }}">{{ r.seq }}</a></td>
<td>{{ r.time|utc }}</td><td>{{ r.kind }}</td><td class="num">{{ r.size }}</td><td>{{ r.stored_at|utc }}</td>
<td>{% if r.seq < s.verified %}<a href="{{ root }}agents/{{ did }}/records/{{ r.seq }}/proof" download>proof {{ r.seq }}</a>{% endif %}</td></tr>
{% else %}<tr><td colspan="6">no records match</td></tr>{% endfor %}</tbody></table>
{% if next_after is not none %}<p><a id="next" href="{{ next_url }}">Next {{ limit }} records</a></p>{% endif %}
{% endblock %}"""

RECORD = """{% extends "base.html" %}{% block title %}record {{ seq }} · Kestrel fleet{% endblock %}{% block main %}
<h1>Record {{ seq }} of <a class="did" href="{{ root }}agents/{{ did }}">{{ did }}</a></h1>
<p><a href="{{ root }}agents/{{ did }}/records/{{ seq }}/proof" download>Download the inclusion proof</a>
(check it with <code>kestrel audit verify-proof FILE --agent {{ did }}</code>)</p>
<pre>{{ body }}</pre>{% endblock %}"""

FORKS = """{% extends "base.html" %}{% block title %}fork evidence · Kestrel fleet{% endblock %}{% block main %}
<h1>Fork evidence for <a class="did" href="{{ root }}agents/{{ did }}">{{ did }}</a></h1>
<p>Each item holds two checkpoints signed by this agent's key that cannot both be true: the key signed two histories.
Treat the agent as compromised.</p>
{% for f in forks %}<section class="fork" aria-labelledby="fork-{{ loop.index }}">
<h2 id="fork-{{ loop.index }}">At tree size {{ f.size }} ({{ f.time|utc }})</h2><p>{{ f.detail }}</p>
<h3>Checkpoint the collector verified</h3><pre>{{ f.verified_note|note }}</pre>
<h3>Conflicting signed checkpoint</h3><pre>{{ f.conflicting_note|note }}</pre></section>
{% else %}<p class="ok">No fork evidence for this agent.</p>{% endfor %}
{% if rejections %}<h2>Refused data</h2><table><thead><tr><th scope="col" class="num">seq</th><th scope="col">reason</th>
<th scope="col">detail</th><th scope="col">sha256</th><th scope="col">time (UTC)</th></tr></thead><tbody>
{% for r in rejections %}<tr><td class="num">{{ r.seq if r.seq is not none else "—" }}</td><td>{{ r.reason }}</td>
<td>{{ r.detail }}</td><td class="did">{{ r.digest }}</td><td>{{ r.time|utc }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% endblock %}"""

ERROR = """{% extends "base.html" %}{% block main %}<h1>{{ status }}</h1><p class="error" role="alert">{{ message }}</p>
<p><a href="{{ root }}">Back to the fleet</a></p>{% endblock %}"""

TEMPLATES = {
    "base.html": BASE,
    "fleet.html": FLEET,
    "agent.html": AGENT,
    "record.html": RECORD,
    "forks.html": FORKS,
    "error.html": ERROR,
}

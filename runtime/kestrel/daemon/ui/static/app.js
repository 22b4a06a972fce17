// Kestrel's local web UI: keeps the open page live by polling the daemon's JSON endpoints
// (same origin, the session cookie). No framework, no build step; pages work without it.
"use strict";

const POLL_MS = 1000;

async function getJson(path) {
  const resp = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    window.location.reload(); // the session ended: show the sign-in page
    return null;
  }
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function text(v) {
  return typeof v === "string" ? v : JSON.stringify(v);
}

function setText(el, value) {
  if (el && el.textContent !== value) el.textContent = value;
}

async function liveStatus() {
  const st = await getJson("/api/status");
  if (!st) return;
  const health = document.getElementById("health");
  setText(health, st.health);
  if (health) health.className = st.health === "ok" ? "ok" : "bad";
  setText(document.getElementById("uptime"), String(st.uptime_s));
  const tbody = document.querySelector("#sensors tbody");
  for (const [name, value] of Object.entries(st.values || {})) {
    let row = document.querySelector(`tr[data-sensor="${CSS.escape(name)}"]`);
    if (!row && tbody) {
      row = document.createElement("tr");
      row.dataset.sensor = name;
      for (const cls of ["name", "type", "state", "value"]) {
        const td = document.createElement("td");
        td.className = cls;
        row.appendChild(td);
      }
      row.cells[0].textContent = name;
      tbody.appendChild(row);
    }
    const info = (st.sensors || {})[name] || {};
    if (row) {
      setText(row.querySelector(".value"), text(value));
      setText(row.querySelector(".state"), info.state || "");
    }
  }
  for (const [name, value] of Object.entries(st.actuators || {})) {
    const row = document.querySelector(`tr[data-actuator="${CSS.escape(name)}"]`);
    if (row) setText(row.querySelector(".value"), text(value));
  }
  for (const [name, value] of Object.entries(st.actions || {})) {
    setText(document.querySelector(`[data-counter="${CSS.escape(name)}"]`), String(value));
  }
  setText(document.getElementById("ledger-size"), String((st.ledger || {}).size));
  setText(document.getElementById("ledger-signed"), String((st.ledger || {}).signed));
}

function eventRow(ev) {
  const body = ev.body || {};
  let outcome, cls, rule = "", detail;
  if (ev.kind === "policy.decision") {
    outcome = body.decision;
    cls = body.decision === "deny" ? "deny" : "allow";
    rule = body.rule || "";
    detail = body.reason || "";
  } else {
    outcome = body.ok ? "ok" : "failed";
    cls = body.ok ? "allow" : "deny";
    detail = body.error && typeof body.error === "object" ? body.error.message || "" : "";
  }
  const when = new Date(ev.time * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  const tr = document.createElement("tr");
  tr.dataset.seq = String(ev.seq);
  tr.className = cls;
  const cells = [ev.seq, when, ev.kind, body.action, outcome, rule, body.source || "", detail];
  const classes = ["", "", "", "", "outcome", "rule", "", ""];
  cells.forEach((v, i) => {
    const td = document.createElement("td");
    if (classes[i]) td.className = classes[i];
    td.textContent = v === undefined || v === null ? "" : String(v);
    tr.appendChild(td);
  });
  return tr;
}

async function liveEvents() {
  const table = document.getElementById("events");
  if (!table) return;
  const got = await getJson(`/api/events?since=${table.dataset.next}`);
  if (!got) return;
  const tbody = table.tBodies[0];
  for (const ev of got.events) {
    if (!tbody.querySelector(`tr[data-seq="${ev.seq}"]`)) tbody.insertBefore(eventRow(ev), tbody.firstChild);
  }
  while (tbody.rows.length > 500) tbody.deleteRow(-1);
  table.dataset.next = String(got.next);
}

async function liveLedger() {
  const got = await getJson("/api/ledger");
  if (!got) return;
  const v = got.verify || {};
  const state = document.getElementById("verify-state");
  setText(state, v.state);
  if (state) state.className = v.state === "ok" ? "ok" : v.state === "failed" ? "bad" : "";
  let detail = "";
  if (v.state === "ok") {
    detail = `${v.size} records verified (chain, tree, checkpoint signatures), ${v.signed_size} under a signed checkpoint, in ${v.seconds} s`;
  } else if (v.state === "failed") {
    detail = v.error;
  }
  setText(document.getElementById("verify-detail"), detail);
  setText(document.getElementById("ledger-size"), String(got.size));
  if (got.checkpoint) {
    setText(document.getElementById("cp-size"), String(got.checkpoint.size));
    setText(document.getElementById("cp-root"), got.checkpoint.root);
    setText(document.getElementById("cp-note"), got.checkpoint.note);
  }
}

const LIVE = { status: liveStatus, events: liveEvents, ledger: liveLedger };

function start() {
  const update = LIVE[document.body.dataset.live];
  if (!update) return;
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      await update();
      document.body.dataset.liveError = "";
    } catch (err) {
      document.body.dataset.liveError = String(err);
    } finally {
      busy = false;
    }
  };
  tick();
  setInterval(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);

"""``kestrel collector serve``: the fleet web view, over HTTP and in a real headless Chromium.

The database is a real PostgreSQL filled by the collector's own core from real signed logs; the
server is the real CLI process. The browser test reads the numbers off the rendered pages and
compares them with the database, checks the screenshots' pixels (the plot's lines, the red fork
badge), walks the pages by keyboard only, and verifies a downloaded inclusion proof.
"""

from __future__ import annotations

import html
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel.ledger.export import verify_proof
from kestrel.sync.collector.core import CollectorCore
from kestrel.sync.collector.postgres import PostgresStore
from kestrel.sync.collector.store import LogFilter
from kestrel.sync.wire import SyncBatch, encode_batch, ledger_topic
from tests.fixtures.procs import free_port, wait_port

from .logs import LogBuilder

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR  # a whole hour
PLOT_RGB = (0x1F, 0x6F, 0xEB)  # PALETTE[0] in web/plot.py
FORK_RGB = (0xB3, 0x26, 0x1E)  # .forked in web/templates.py


@pytest.fixture
def fleet_db(pg_url) -> Iterator[tuple[str, dict[str, LogBuilder]]]:
    """Four agents: one named, spread over five hours; one with held records; one forked; one small."""
    store = PostgresStore(pg_url)
    core = CollectorCore(store, clock=time.time)
    named, held, forked, small = LogBuilder(), LogBuilder(), LogBuilder(), LogBuilder()
    named.append(1, kind="agent.created", body={"name": "porch-pi", "did": named.did}, at=T0)
    for h in range(5):
        named.append(10 * (h + 1), kind="sensor.reading", at=T0 + h * HOUR + 60, step=30)
        named.append(3, kind="policy.decision", body={"allow": h % 2 == 0}, at=T0 + h * HOUR + 2000)
    held.append(30, at=T0 + HOUR)
    forked.append(20, at=T0 + 2 * HOUR)
    small.append(3, at=T0 + 4 * HOUR)
    for log in (named, held, forked, small):
        n = len(log.records) - (10 if log is held else 0)
        for a in range(0, n, 25):
            b = min(a + 25, n)
            core.handle(ledger_topic(log.did), encode_batch(SyncBatch(a, tuple(log.records[a:b]), log.checkpoint(b))))
    core.handle(ledger_topic(held.did), encode_batch(SyncBatch(20, tuple(held.records[20:]), None)))  # no checkpoint
    other = forked.fork(12)
    other.append(8, body={"evil": True})
    core.handle(ledger_topic(forked.did), encode_batch(SyncBatch(20, (), other.checkpoint())))
    store.close()
    yield pg_url, {"named": named, "held": held, "forked": forked, "small": small}


class Server:
    def __init__(self, db: str, tmp: Path, *, host: str = "127.0.0.1", token_file: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "kestrel.cli",
            "collector",
            "serve",
            "--db",
            db,
            "--listen",
            f"{host}:{self.port}",
        ]
        if token_file is not None:
            argv += ["--token-file", str(token_file)]
        self.log = tmp / f"serve-{self.port}.log"
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=f)
        wait_port(self.port, timeout=30, proc=self.proc)

    def get(self, path: str, *, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        """One request, redirects not followed."""

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.build_opener(NoRedirect).open(req, timeout=20) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture
def server(fleet_db, tmp_path) -> Iterator[tuple[Server, str, dict[str, LogBuilder]]]:
    db, logs = fleet_db
    srv = Server(db, tmp_path)
    yield srv, db, logs
    srv.stop()


# -- HTTP ----------------------------------------------------------------------------------------
def test_pages_proofs_and_refusals_over_http(server):
    srv, db, logs = server
    forked = logs["forked"].did
    status, headers, body = srv.get("/")
    assert status == 200 and b"porch-pi" in body and "default-src 'none'" in headers["content-security-policy"]
    status, _, body = srv.get(f"/agents/{forked}/forks")
    store = PostgresStore(db)
    try:
        [fork] = store.forks(forked)
    finally:
        store.close()
    assert status == 200 and html.escape(fork.conflicting_note.decode()).encode() in body
    assert html.escape(fork.verified_note.decode()).encode() in body
    status, headers, proof = srv.get(f"/agents/{logs['named'].did}/records/7/proof")
    assert status == 200 and "attachment" in headers["content-disposition"]
    assert verify_proof(proof, logs["named"].signer.public_key).record.seq == 7
    assert srv.get(f"/agents/{logs['held'].did}/records/25/proof")[0] == 404  # held, not verified: no proof
    assert srv.get(f"/agents/{logs['named'].did}?seq_min=abc")[0] == 400
    assert srv.get(f"/agents/{logs['named'].did}?since=yesterday")[0] == 400
    assert srv.get("/agents/did:key:zNOTANAGENT")[0] == 404
    assert srv.get("/", method="POST")[0] == 405  # read-only


def test_a_token_is_required_off_loopback(fleet_db, tmp_path):
    db, logs = fleet_db
    r = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "collector", "serve", "--db", db, "--listen", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 64 and "needs a token" in r.stderr and "Traceback" not in r.stderr
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    token_file.chmod(0o644)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kestrel.cli",
            "collector",
            "serve",
            "--db",
            db,
            "--listen",
            f"0.0.0.0:{free_port()}",
            "--token-file",
            str(token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 64 and "chmod 600" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "collector", "serve", "--db", db, "--listen", "nowhere:x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 64 and "invalid --listen address" in r.stderr and "Traceback" not in r.stderr
    token_file.chmod(0o600)
    srv = Server(db, tmp_path, host="0.0.0.0", token_file=token_file)
    try:
        assert srv.get("/")[0] == 401
        assert srv.get(f"/agents/{logs['named'].did}/records/1/proof")[0] == 401
        assert srv.get("/", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert srv.get("/", headers={"Authorization": "Bearer s3cret-token-0123456789"})[0] == 200
        status, headers, _ = srv.get("/?token=s3cret-token-0123456789")  # a link with the token, opened once
        assert status == 303 and headers["location"] == "/" and "HttpOnly" in headers["set-cookie"]
        cookie = headers["set-cookie"].split(";")[0]
        assert srv.get("/", headers={"Cookie": cookie})[0] == 200
        assert srv.get("/", headers={"Cookie": "kestrel_collector_token=nope"})[0] == 401
    finally:
        srv.stop()


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture
def page(tmp_path):
    from tests.ui.browser import Chromium, find_chromium

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium; ./dev test does)")
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        p = browser.page()
        try:
            yield p
        finally:
            p.close()
    finally:
        browser.close()


def _count(png: bytes, rgb: tuple[int, int, int]) -> int:
    from tests.ui.browser import decode_png

    _, _, rows = decode_png(png)
    want = bytes(rgb)
    return sum(row[i : i + 3] == want for row in rows for i in range(0, len(row), 3))


def _key(page, key: str, code: int, text: str = "") -> None:
    for kind in ("keyDown", "keyUp"):
        page.call(
            "Input.dispatchKeyEvent",
            type=kind,
            key=key,
            code=key,
            windowsVirtualKeyCode=code,
            nativeVirtualKeyCode=code,
            **({"text": text} if text and kind == "keyDown" else {}),
        )


def _tab_to(page, selector: str, *, limit: int = 40) -> None:
    for _ in range(limit):
        _key(page, "Tab", 9)
        if page.eval(f"document.activeElement && document.activeElement.matches({selector!r})"):
            return
    raise AssertionError(f"Tab never reached {selector}")


def _enter(page) -> None:
    page.events.clear()
    _key(page, "Enter", 13, "\r")
    page.wait_event("Page.loadEventFired")


def test_fleet_view_in_chromium(server, page, tmp_path):
    srv, db, logs = server
    store = PostgresStore(db)
    try:
        summaries = {s.did: s for s in store.summaries()}
        page.navigate(srv.url + "/")
        shot = page.screenshot(tmp_path / "fleet.png")
        rows = page.eval("""[...document.querySelectorAll('#fleet tbody tr')].map(tr => ({did: tr.dataset.did,
            records: +tr.querySelector('[data-col=records]').innerText,
            verified: +tr.querySelector('[data-col=verified]').innerText,
            pending: +tr.querySelector('[data-col=pending]').innerText,
            forks: +tr.querySelector('[data-col=forks]').innerText,
            name: tr.cells[1].innerText}))""")
        assert {r["did"]: (r["records"], r["verified"], r["pending"], r["forks"]) for r in rows} == {
            d: (s.records, s.verified, s.pending, s.forks) for d, s in summaries.items()
        }
        assert {r["did"]: r["name"] for r in rows}[logs["named"].did] == "porch-pi"
        totals = page.eval(
            "['agents','records','pending','forked'].map(k => +document.getElementById('total-' + k).innerText)"
        )
        assert totals == [
            len(summaries),
            sum(s.records for s in summaries.values()),
            sum(s.pending for s in summaries.values()),
            sum(1 for s in summaries.values() if s.forks),
        ]
        assert totals[2] == 10 and totals[3] == 1  # the held records and the forked agent are there to see
        assert page.eval("document.querySelectorAll('figure svg polyline').length") == 4
        assert _count(shot, PLOT_RGB) > 300, "the plot's first line is not drawn"
        assert _count(shot, FORK_RGB) > 50, "the fork badge is not drawn"

        # keyboard only: Tab to the named agent's link, Enter
        _tab_to(page, f"a[href='/agents/{logs['named'].did}']")
        _enter(page)
        assert page.eval("location.pathname") == f"/agents/{logs['named'].did}"
        agent_shot = page.screenshot(tmp_path / "agent.png")
        assert _count(agent_shot, PLOT_RGB) > 300
        s = summaries[logs["named"].did]
        assert page.eval("+document.getElementById('agent-records').innerText") == s.records
        hours = page.eval("document.querySelector('figure svg polyline').getAttribute('points').split(' ').length")
        assert hours == 5  # five hours of records
        # filter by kind from the keyboard: Tab into the field, type, Enter submits
        _tab_to(page, "input[name=kind]")
        page.call("Input.insertText", text="policy.")
        _enter(page)
        seqs = page.eval("[...document.querySelectorAll('#log tbody tr')].map(tr => +tr.dataset.seq)")
        want = [r.seq for r in store.log(logs["named"].did, LogFilter(kind="policy."))]
        assert seqs == want and len(want) == 15
        page.screenshot(tmp_path / "filtered.png")
        href = page.eval(f"document.querySelector('#log tr[data-seq=\"{want[2]}\"] a[download]').href")
        with urllib.request.urlopen(href, timeout=20) as resp:
            proof = verify_proof(resp.read(), logs["named"].signer.public_key)
        assert proof.record.seq == want[2] and proof.record.kind == "policy.decision"
        # the fork evidence page, reached from the fleet list by keyboard
        page.navigate(srv.url + "/")
        _tab_to(page, "a.forked")
        _enter(page)
        assert page.eval("location.pathname") == f"/agents/{logs['forked'].did}/forks"
        notes = page.eval("[...document.querySelectorAll('.fork pre')].map(p => p.innerText)")
        fork = store.forks(logs["forked"].did)[0]
        assert fork.conflicting_note.decode().strip() in [n.strip() for n in notes]
        page.screenshot(tmp_path / "forks.png")
    finally:
        store.close()

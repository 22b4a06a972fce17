"""The web UI in a real headless Chromium against a real `kestrel run` (sim board, owner-installed policy).

The owner makes a token with `kestrel ui token`; the browser is refused without it, with a wrong
one and with an expired one (each refusal recorded in the ledger), signs in with the right one,
sees `kestrel sim` change a sensor, and requests an action the policy denies (and sees the rule)
and one it allows. Screenshots are taken and their pixels checked.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrel.daemon.ui.tokens import TokenFile
from kestrel.sdk import Client
from tests.daemon.test_process import _env
from tests.integration.conftest import KESTREL, start_daemon

from .browser import Chromium, Page, decode_png, find_chromium

DENIED_RGB = (0xB3, 0x26, 0x1E)  # .outcome.denied in style.css
ALLOWED_RGB = (0x1B, 0x6E, 0x2E)  # .outcome.allowed

CONFIG = """version: 1
board: sim
sensors:
  button: {type: gpio, pin: GPIO17, edge: both, bias: pull_down}
actuators:
  lamp: {type: gpio, pin: GPIO27}
ui: {listen: "127.0.0.1:0"}
"""


def kestrel(*args: str) -> str:
    r = subprocess.run([*KESTREL, *args], capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture
def daemon(provisioned: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    cfg = tmp_path / "device.yaml"
    cfg.write_text(CONFIG)
    proc = start_daemon(provisioned, cfg)
    try:
        url = Client(provisioned).status()["ui"]["url"]
        assert url.startswith("http://127.0.0.1:")
        yield provisioned, url
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    if find_chromium() is None:
        pytest.fail("chromium is not installed: `./dev test` installs Debian's chromium")
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        p = browser.page()
        try:
            yield p
        finally:
            p.close()
    finally:
        browser.close()


def count_rgb(png: bytes, rgb: tuple[int, int, int]) -> tuple[int, int]:
    """(pixels of exactly ``rgb``, all pixels) of a screenshot."""
    width, height, rows = decode_png(png)
    want = bytes(rgb)
    return sum(row[i : i + 3] == want for row in rows for i in range(0, len(row), 3)), width * height


def refusals(state: Path, n: int) -> list[dict[str, Any]]:
    got = []
    for rec in Client(state, timeout=20).follow(kind="ui.refused"):
        got.append(rec["body"])
        if len(got) >= n:
            return got
    return got


def test_browser_sign_in_live_sensor_and_a_denied_action(daemon, page, tmp_path):
    state, url = daemon
    token = json.loads(kestrel("ui", "token", "--state", str(state), "--label", "browser test", "--json"))["token"]
    shots = tmp_path / "shots"
    shots.mkdir()

    # no token, no page: the sign-in form, nothing of the device
    page.navigate(url)
    assert page.eval("document.body.id") == "login"
    assert page.eval("document.getElementById('sensors')") is None
    login_png = page.screenshot(shots / "1-login.png")
    red, total = count_rgb(login_png, DENIED_RGB)
    white, _ = count_rgb(login_png, (255, 255, 255))
    assert red == 0 and total == 1280 * 900 and 0.5 * total < white < total  # a page with text, no denial

    # a wrong token, then an expired one: refused, said so, and recorded
    page.submit("form", {"token": "kui_0badc0de_" + "A" * 43})
    assert "not a valid token" in page.wait_for("document.getElementById('login-error')?.textContent")
    expired = TokenFile(state).issue(ttl_s=60, now=time.time() - 3600, label="old").token
    page.submit("form", {"token": expired})
    assert "expired" in page.wait_for("document.getElementById('login-error')?.textContent")
    assert page.eval("document.getElementById('sensors')") is None
    recorded = refusals(state, 2)
    assert {(r["reason"], r["token"]) for r in recorded} == {("unknown", "0badc0de"), ("expired", expired[4:12])}
    assert all(r["peer"] == "127.0.0.1" for r in recorded)

    # the owner's token: signed in (an HttpOnly, SameSite=Strict session cookie), health and sensors
    page.submit("form", {"token": token})
    page.wait_for("document.getElementById('health')?.textContent === 'ok'", what="the health page")
    cookies = {c["name"]: c for c in page.call("Network.getCookies", urls=[url])["cookies"]}
    assert cookies["kestrel_ui"]["httpOnly"] is True and cookies["kestrel_ui"]["sameSite"] == "Strict"
    assert page.eval("document.cookie") == ""  # not readable by scripts
    assert token not in json.dumps(cookies)  # the token itself is never the cookie
    value = "document.querySelector('tr[data-sensor=\"button\"] .value')?.textContent"
    assert page.wait_for(value) == "0"

    # `kestrel sim` presses the button: the open page shows it without a reload
    kestrel("sim", "GPIO17", "1", "--state", str(state))
    page.wait_for(f"{value} === '1'", what="the button's new value on the page")
    page.screenshot(shots / "2-health.png")

    # an action the policy denies, requested through the form: the denial with its rule
    page.navigate(url + "request")
    page.submit(
        "#request-form",
        {"action": "send_email", "args": json.dumps({"to": "alice@example.com", "subject": "from the UI"})},
    )
    page.wait_for("!!document.querySelector('#outcome.denied')", what="the denial")
    assert page.eval("document.getElementById('outcome-rule').textContent") == "default-deny"
    assert "send_email" in page.eval("document.getElementById('outcome-reason').textContent")
    box = page.eval(
        "(() => { const r = document.getElementById('outcome').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
    )
    full = page.screenshot(shots / "3-denied.png")
    red, _ = count_rgb(full, DENIED_RGB)
    clip = page.screenshot(shots / "3-denied-box.png", clip=box)
    box_red, box_total = count_rgb(clip, DENIED_RGB)
    assert box_red >= 0.6 * box_total, (box_red, box_total)  # the box is the denial's red, text aside
    assert red >= box_red > 1000

    # the decision went through the daemon's policy pipeline: it is in the ledger, like a `kestrel call`'s
    with Client(state, timeout=20) as k:
        for rec in k.follow(kind="policy.decision"):
            if rec["body"]["action"] == "send_email":
                assert rec["body"]["decision"] == "deny" and rec["body"]["rule"] == "default-deny"
                break
        else:
            raise AssertionError("the ledger has no decision on the send_email request")

    # and an allowed one acts on the device, recorded with the UI as its source
    page.submit("#request-form", {"action": "gpio.write", "args": '{"actuator": "lamp", "value": 1}'})
    page.wait_for("!!document.querySelector('#outcome.allowed')", what="the allowed outcome")
    box = page.eval(
        "(() => { const r = document.getElementById('outcome').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
    )
    green, total = count_rgb(page.screenshot(shots / "4-allowed-box.png", clip=box), ALLOWED_RGB)
    assert green >= 0.6 * total
    assert Client(state).status()["actuators"] == {"lamp": 1}
    with Client(state, timeout=20) as k:
        for rec in k.follow(kind="action.result"):
            if rec["body"]["action"] == "gpio.write":
                assert rec["body"]["source"].startswith("ui:token=") and rec["body"]["ok"] is True
                break
        else:
            raise AssertionError("the ledger has no result of the gpio.write request")

    # the live actions page lists the denial with its rule
    page.navigate(url + "actions")
    page.wait_for(
        "[...document.querySelectorAll('#events tr.deny')].some(r => "
        "r.cells[3].textContent === 'send_email' && r.querySelector('.rule').textContent === 'default-deny')",
        what="the denial on the actions page",
    )

    # the ledger page verifies the log and shows the latest signed checkpoint
    page.navigate(url + "ledger")
    page.wait_for("document.getElementById('verify-state').textContent === 'ok'", what="the ledger verification")
    assert int(page.eval("document.getElementById('cp-size').textContent")) > 0

    # the policy page shows the policy in force, from its bundle
    page.navigate(url + "policy")
    assert "gpio.write" in page.eval("document.getElementById('policy-text').textContent")
    assert page.eval("document.getElementById('policy-state').textContent") == "loaded"

    # signing out ends the session: back to the sign-in page
    page.submit("form.logout", {})
    assert page.eval("document.body.id") == "login"
    page.navigate(url)
    assert page.eval("document.body.id") == "login"

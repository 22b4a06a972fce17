"""The README's command blocks run as written, top to bottom, like a new user would run them.

Each block (the first ``sh`` block under "## Quick start", and under "## Coming from the
announcement") is taken from README.md and run by ``bash`` in a fresh copy of the checkout's
files, with an empty ``HOME``, no ``KESTREL_*`` variables and no terminal. Any command that exits
non-zero fails the test, except those whose comment says ``# refused``: those must fail. Nothing
may print a traceback.

The copy has the checkout's virtualenv (``.venv``) and built models (``models/*/build``, from
``tools/build_models.py``, which ``./dev test`` runs first) linked in. The announcement's install
lines (``python3 -m venv``, ``pip install``) run only in the ``slow`` variant, in a new
virtualenv of the copy: installing from the package index takes minutes.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.procs import require_binary

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MODELS_NEEDED = ("minilm", "tinylm")
INSTALL = re.compile(r"^(python3 -m venv|pip install)\b")
REFUSED = re.compile(r"\s#\s*refused\b.*$")


def readme_block(heading: str) -> str:
    """The first ```sh block after the line ``heading``."""
    text = README.read_text()
    at = text.index(f"\n{heading}\n")
    m = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, at)
    assert m, f"no ```sh block under {heading!r} in README.md"
    return m.group(1)


def as_script(block: str, *, install: bool) -> tuple[str, int]:
    """The block as a bash script that stops at the first unexpected exit; returns (script, refusals)."""
    out = ["set -eo pipefail", "PS4='+ README: '", "set -x"]
    refusals = 0
    for line in block.splitlines():
        if INSTALL.match(line) and not install:
            out.append(f": skipped, the slow variant runs it: {shlex.quote(line)}")
            continue
        m = REFUSED.search(line)
        if m and not line.lstrip().startswith("#"):
            cmd = line[: m.start()]
            refusals += 1
            out.append(
                f"if {cmd}; then echo 'README: expected a refusal from: '{shlex.quote(cmd)} >&2; exit 97; "
                'else echo "README: refused as expected (exit $?)"; fi'
            )
        else:
            out.append(line)
    return "\n".join(out) + "\n", refusals


def fresh_copy(dest: Path, *, link_venv: bool) -> Path:
    """The checkout's files (tracked and not ignored, as they are now: a clean clone in CI), with the
    built models linked in."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir()
    tar = subprocess.run(
        ["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", "-"], cwd=ROOT, input=files, capture_output=True
    ).stdout
    subprocess.run(["tar", "-xf", "-"], cwd=dest, input=tar, check=True)
    missing = [n for n in MODELS_NEEDED if not (ROOT / "models" / n / "build" / "manifest.json").is_file()]
    if missing:
        pytest.fail(
            f"models not built: {', '.join(missing)}; run `.venv/bin/python tools/build_models.py` "
            "(./dev test does it first)"
        )
    for name in MODELS_NEEDED:
        (dest / "models" / name / "build").symlink_to(ROOT / "models" / name / "build")
    if link_venv:
        venv = ROOT / ".venv"
        assert (venv / "bin" / "kestrel").exists(), "set up first: ./dev setup"
        (dest / ".venv").symlink_to(venv)
    return dest


def run_block(tmp_path: Path, heading: str, *, install: bool = False, timeout: float = 120.0) -> str:
    work = fresh_copy(tmp_path / "checkout", link_venv=not install)
    home = tmp_path / "home"
    home.mkdir()
    script, refusals = as_script(readme_block(heading), install=install)
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
    }
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
        if key in os.environ:  # where this machine's package index is, for the slow variant
            env[key] = os.environ[key]
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the README block under {heading!r} did not finish in {timeout:.0f} s:\n{out[-6000:]}")
    finally:
        _stop_leftovers(proc.pid, home)
    assert proc.returncode == 0, f"the README block under {heading!r} stopped (exit {proc.returncode}):\n{out[-6000:]}"
    assert "Traceback" not in out, out[-6000:]
    refused = [line for line in out.splitlines() if line.startswith("README: refused as expected (exit ")]
    assert len(refused) == refusals and "(exit 0)" not in "".join(refused)
    return out


def _stop_leftovers(pgid: int, home: Path) -> None:
    """The daemon a failed block left running (same process group) and the swtpm it started."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    pidfile = home / "swtpm" / "swtpm.pid"
    if pidfile.is_file():
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def test_quick_start_runs_as_written(tmp_path: Path) -> None:
    out = run_block(tmp_path, "## Quick start")
    for seen in (
        "Created agent 'demo'",
        "health   ok",
        "policy denied gpio.write",
        "policy denied fetch_data",
        "ledger intact",
        "proof valid: record 3",
        "deployed minilm",
        "the greenhouse vent sticks",
        "-> ALLOW",
        "registered local LLM tinylm",
        "step 1 [llm]",
        "trusted did:key:",
    ):
        assert seen in out, f"{seen!r} not in the quick start's output:\n{out[-6000:]}"


def test_announcement_runs_as_written(tmp_path: Path) -> None:
    require_binary("swtpm")
    out = run_block(tmp_path, "## Coming from the announcement")
    for seen in (
        "Created agent 'PersonalAssistant'",
        "backend:    tpm",
        "algorithm:  p256",
        "health   ok",
        "registered local LLM tinylm",
        "send_email: ok",
        "policy.decision",
        "trusted did:key:",
    ):
        assert seen in out, f"{seen!r} not in the announcement block's output:\n{out[-6000:]}"


@pytest.mark.slow
def test_announcement_with_its_install_steps(tmp_path: Path) -> None:
    require_binary("swtpm")
    run_block(tmp_path, "## Coming from the announcement", install=True, timeout=1800.0)


def test_refusal_marks_are_enforced() -> None:
    """A line marked refused that succeeds stops the block (the check can fail)."""
    script, n = as_script("true   # refused: never\necho after\n", install=False)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert n == 1 and r.returncode == 97 and "after" not in r.stdout
    script, _ = as_script("false\necho after\n", install=False)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 1 and "after" not in r.stdout

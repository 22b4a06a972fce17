"""Benchmark: the daemon's peak memory while it refuses a huge bundle and while it applies a large one.

Run::

    .venv/bin/python tools/bench/ota_memory.py [--refuse-mib 600] [--apply-mib 64] [--dir DIR]

A real ``kestrel run`` (sim board, file keystore) is started with an OTA drop directory. The
baseline is the same daemon's idle RSS, measured in the same run. For each trial the daemon's peak
RSS (``VmHWM``, reset through ``/proc/PID/clear_refs`` before the trial) is read once the trial's
ledger record (``ota.rejected`` or ``ota.applied``) is there, and printed as an absolute figure and
as the growth over idle:

* refuse: a ``--refuse-mib`` file in the drop directory, over ``ota.max_bundle`` (16 MiB);
* refuse: the same file with a bad head, under a 1 GiB ``ota.max_bundle`` (so only the head check
  stops it), from the drop directory and through ``kestrel ota apply`` (the CLI's peak as well);
* apply: a legitimate owner-signed ``--apply-mib`` bundle (a model entry) from the drop directory.

Target (issue 12): at most +16 MB over idle for every refusal. How it scales: a refusal reads the
file's head (<= 80 KiB) and hashes the file in 1 MiB pieces, so its memory is independent of the
file's size; an apply holds the bundle once (its size) while it is verified and staged.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtime"))

from kestrel.identity.keys import SoftwareSigner  # noqa: E402
from kestrel.ota.build import make_bundle  # noqa: E402
from kestrel.ota.bundle import sign_bundle  # noqa: E402
from kestrel.ota.store import OtaDir  # noqa: E402

KESTREL = [sys.executable, "-m", "kestrel.cli"]
TARGET_MB = 16.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(ROOT / "runtime")
    return env


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS


def _start(state: Path, cfg: Path) -> subprocess.Popen:
    from kestrel.sdk import Client

    log = open(state.parent / "daemon.log", "ab")
    proc = subprocess.Popen(
        [*KESTREL, "run", "--state", str(state), "--config", str(cfg), "--log-level", "warning"], env=_env(), stderr=log
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            if Client(state, timeout=2).status()["health"] == "ok":
                return proc
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = (state.parent / "daemon.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"the daemon did not start:\n{tail}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def _records(state: Path, kind: str) -> int:
    from kestrel.ledger import iter_records

    return sum(1 for _ in iter_records(state / "ledger", kind=kind))


def _wait_record(state: Path, kind: str, before: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while _records(state, kind) <= before:
        if time.monotonic() > deadline:
            raise SystemExit(f"no new {kind} record within {timeout:.0f}s")
        time.sleep(0.2)


def _sparse(path: Path, size: int, head: bytes) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _trial(label: str, proc: subprocess.Popen, state: Path, kind: str, act, idle_kb: int) -> float:
    before = _records(state, kind)
    _reset_peak(proc.pid)
    extra = act()
    _wait_record(state, kind, before)
    peak = _status_kb(proc.pid, "VmHWM")
    growth = (peak - idle_kb) / 1024
    note = f"; {extra}" if extra else ""
    print(f"  {label:62} peak {peak / 1024:6.1f} MB  (+{growth:5.1f} MB over idle{note})")
    return growth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--refuse-mib", type=int, default=600)
    ap.add_argument("--apply-mib", type=int, default=64)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kestrel-bench-ota-mem-", dir=args.dir or ROOT))
    try:
        state, drop = tmp / "state", tmp / "drop"
        drop.mkdir()
        small, big = tmp / "small.yaml", tmp / "big.yaml"
        small.write_text(f"version: 1\nota: {{drop_dir: {drop}, poll: 0.1}}\n")
        big.write_text(f"version: 1\nota: {{drop_dir: {drop}, poll: 0.1, max_bundle: {1 << 30}}}\n")
        _stop(_start(state, small))  # first start: the identity is created
        from kestrel.identity import load_identity

        owner = SoftwareSigner.generate()
        OtaDir(state).init_root([owner.public_key.did], 1)
        did = load_identity(state).did
        now = time.time()
        legit = sign_bundle(
            make_bundle(
                policy=b"actions: [gpio.write]\n",
                models=[("model.bin", os.urandom(args.apply_mib << 20))],
                counter=1,
                now=now,
                expires=now + 3600,
                agents=[did],
            ),
            owner,
        )
        results: list[tuple[str, float, bool]] = []

        def drop_file(src: Path, name: str):
            def act() -> str:
                os.link(src, drop / name)
                return ""

            return act

        print(
            f"daemon RSS, refusing a {args.refuse_mib} MiB file and applying a {args.apply_mib} MiB bundle "
            f"(target: refusals <= +{TARGET_MB:g} MB over idle)"
        )
        for cfg, limit in ((small, "16 MiB"), (big, "1 GiB")):
            proc = _start(state, cfg)
            try:
                time.sleep(1.0)
                idle = _status_kb(proc.pid, "VmRSS")
                print(f" ota.max_bundle {limit}: idle RSS {idle / 1024:.1f} MB (baseline)")
                why = "over the size limit" if cfg is small else "bad head, under the limit"
                huge = _sparse(
                    tmp / f"huge-{limit[:2].strip()}.bin",
                    args.refuse_mib << 20,
                    f"NOT A KESTREL BUNDLE ({limit})".encode(),
                )  # new bytes: not deduplicated
                results.append(
                    (
                        f"refuse {args.refuse_mib} MiB, drop dir ({why})",
                        _trial(
                            f"refuse {args.refuse_mib} MiB from the drop dir ({why})",
                            proc,
                            state,
                            "ota.rejected",
                            drop_file(huge, f"huge-{limit[:2].strip()}.kbundle"),
                            idle,
                        ),
                        True,
                    )
                )

                def cli_apply(huge: Path = huge) -> str:
                    t0 = time.perf_counter()
                    err, peak = tmp / "cli.err", tmp / "cli.peak"
                    # GNU time reports the CLI's own peak RSS (a child forked from this big process would
                    # inherit this process's high-water mark across exec)
                    with open(err, "wb") as fh:
                        rc = subprocess.call(
                            [
                                "/usr/bin/time",
                                "-f",
                                "%M",
                                "-o",
                                str(peak),
                                *KESTREL,
                                "ota",
                                "apply",
                                str(huge),
                                "--state",
                                str(state),
                            ],
                            env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=fh,
                        )
                    text = err.read_text(errors="replace")
                    assert rc != 0 and "Traceback" not in text, text
                    said = text.strip().splitlines()[0][:60] if text.strip() else ""
                    cli_mb = int(peak.read_text().split()[-1]) / 1024
                    return f"CLI peak {cli_mb:.1f} MB, {time.perf_counter() - t0:.1f} s: {said}"

                results.append(
                    (
                        f"refuse {args.refuse_mib} MiB, kestrel ota apply ({why})",
                        _trial(
                            f"refuse {args.refuse_mib} MiB via kestrel ota apply ({why})",
                            proc,
                            state,
                            "ota.rejected",
                            cli_apply,
                            idle,
                        ),
                        True,
                    )
                )
                if cfg is big:
                    (tmp / "legit.kbundle").write_bytes(legit)
                    results.append(
                        (
                            f"apply {args.apply_mib} MiB bundle, drop dir",
                            _trial(
                                f"apply a signed {args.apply_mib} MiB bundle from the drop dir",
                                proc,
                                state,
                                "ota.applied",
                                drop_file(tmp / "legit.kbundle", "legit.kbundle"),
                                idle,
                            ),
                            False,
                        )
                    )
            finally:
                _stop(proc)
        worst = max(g for _, g, refusal in results if refusal)
        print(
            f"worst refusal: +{worst:.1f} MB over idle -> target <= +{TARGET_MB:g} MB "
            f"{'met' if worst <= TARGET_MB else 'NOT met'}"
        )
        apply_growth = next(g for label, g, refusal in results if not refusal)
        print(
            f"apply: +{apply_growth:.1f} MB over idle for {args.apply_mib} MiB "
            f"({apply_growth / args.apply_mib:.2f} MB per MiB of bundle)"
        )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

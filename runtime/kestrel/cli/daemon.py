"""``kestrel run``, ``kestrel call``, ``kestrel status``, ``kestrel sim``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import UsageError
from ._common import add_passphrase_file_arg, add_state_arg, parse_extra_args

__all__ = ["register", "parse_extra_args"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the agent daemon (the sim board and an example config by default)")
    p.add_argument("--config", metavar="FILE", help="device config YAML (default: the embedded example)")
    p.add_argument(
        "--board",
        metavar="NAME",
        help="board profile: auto, rpi4, rpi5, rpi-zero-2w, jetson-nano, "
        "jetson-orin-nano, sim (default: the config's, else sim/auto)",
    )
    add_state_arg(p)
    add_passphrase_file_arg(
        p,
        help="file holding the agent keystore's passphrase (else $KESTREL_PASSPHRASE, "
        "else a prompt when run in the foreground of a terminal; never a prompt otherwise)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "call",
        help="ask the running daemon to take an action (the policy decides)",
        description="Unknown --key value options become the action's arguments, e.g. "
        "kestrel call --action send_email --to alice@example.com --subject Hello",
        epilog=_actions_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--action", required=True, metavar="NAME", help="the action (listed below)")
    p.add_argument("--args-json", metavar="JSON", help="arguments as one JSON object (typed values)")
    add_state_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_call, accepts_extra=True)

    p = sub.add_parser("status", help="health, sensors, outbox and ledger size of the running daemon")
    add_state_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        default=0.0,
        help="wait up to SECONDS for a daemon that is starting (e.g. right after `kestrel run &`)",
    )
    p.set_defaults(func=_status)

    p = sub.add_parser("sim", help="drive an input of the simulated board: kestrel sim GPIO17 1")
    p.add_argument("pin", nargs="?")
    p.add_argument("value", nargs="?", type=int, choices=(0, 1))
    p.add_argument("--list", action="store_true", help="list the sim board's configured pins and levels")
    add_state_arg(p)
    p.set_defaults(func=_sim)


def _actions_epilog() -> str:
    from ..policy.catalog import KNOWN_ACTIONS

    lines = ["actions the runtime knows (arguments; the active policy decides which are allowed):"]
    for name, spec in KNOWN_ACTIONS.items():
        if spec.callable:
            lines.append(f"  {name:<15} {', '.join(spec.args)}  ({spec.summary})")
    lines.append("example: kestrel call --action gpio.write --actuator lamp --value 1")
    return "\n".join(lines)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.lean import import_asyncio_without_tls, use_builtin_hashes

    use_builtin_hashes()  # no system libcrypto just for SHA-256 (3.9 MB less RSS)
    import_asyncio_without_tls()  # the daemon's own TLS goes through paho/smtplib/urllib
    from ..daemon.main import run_daemon

    passphrase = None
    if args.passphrase_file:
        from ..identity.secrets import read_passphrase_file

        passphrase = read_passphrase_file(args.passphrase_file)
    return run_daemon(
        config_path=args.config, board=args.board, state_dir=args.state, log_level=args.log_level, passphrase=passphrase
    )


MAX_ARGS_JSON = 192 * 1024  # the control socket takes lines of at most 256 KiB


def _call(args: argparse.Namespace, extra: list[str]) -> int:
    from ..sdk import Client

    call_args = parse_extra_args(extra)
    if args.args_json:
        from .._internal.strictjson import StrictJsonError, loads_strict

        if len(args.args_json) > MAX_ARGS_JSON:
            raise UsageError(f"--args-json is longer than {MAX_ARGS_JSON} bytes")
        try:
            typed = loads_strict(args.args_json)
        except StrictJsonError as exc:
            raise UsageError(
                f"--args-json is not strict JSON: {exc}",
                hint="one JSON object; finite numbers only (no NaN or Infinity)",
            ) from None
        if not isinstance(typed, dict):
            raise UsageError("--args-json must be a JSON object")
        call_args.update(typed)
    with Client(args.state) as client:
        result = client.call(args.action, **call_args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"{args.action}: ok")
        for k, v in (result or {}).items():
            print(f"  {k}: {v if not isinstance(v, (dict, list)) else json.dumps(v)}")
    return 0


def _status(args: argparse.Namespace, extra: list[str]) -> int:
    with _connect(args.state, wait=args.wait) as client:
        st = client.status()
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0 if st.get("health") == "ok" else 1
    print(f"agent    {st['agent']}")
    print(f"health   {st['health']}  (board {st['board']}, up {st['uptime_s']}s, pid {st['pid']})")
    print(f"config   {st['config']}")
    led = st["ledger"]
    print(
        f"ledger   {led['size']} records, {led.get('signed', 0)} covered by a signed checkpoint"
        + (f", first kept record {led['first_seq']} (pruned before)" if led.get("first_seq") else "")
    )
    pol = st.get("policy") or {}
    if pol.get("loaded"):
        print(f"policy   bundle {str(pol.get('bundle'))[:16]}")
    elif pol:
        print("policy   none: every action is denied" + (f" ({pol['error']})" if pol.get("error") else ""))
    ob = st["outbox"]
    print(
        f"outbox   {ob['pending']} pending, {ob['sent']} sent, {ob['failed']} failed"
        + (f" (last error: {ob['last_error']})" if ob.get("last_error") else "")
    )
    a = st["actions"]
    print(f"actions  {a['allowed']} allowed, {a['denied']} denied, {a['failed']} failed, {a['dropped']} dropped")
    doubt = st.get("indoubt") or {}
    if doubt:
        print(
            f"in doubt {doubt.get('actions', 0)} actions, {doubt.get('mail', 0)} mail deliveries left unfinished by "
            f"the last run ({doubt.get('previous_stop') or 'unknown'} stop)"
            + ("; see: kestrel audit log --kind 'action.indoubt'" if doubt.get("actions") else "")
        )
    if st.get("mqtt"):
        print(f"mqtt     {'connected' if st['mqtt']['connected'] else 'offline'}")
    _print_links(st, args.state)
    for name, info in sorted(st["sensors"].items()):
        if name.startswith("_"):
            continue
        value = st["values"].get(name)
        extra_info = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("type", "state"))
        print(
            f"sensor   {name:<16} {info['type']:<8} {info['state']:<12} value={json.dumps(value)}"
            + (f"  {extra_info}" if extra_info else "")
        )
    for name, value in sorted(st["actuators"].items()):
        print(f"actuator {name:<16} value={value}")
    return 0 if st["health"] == "ok" else 1


def _connect(state: str | None, *, wait: float) -> Any:
    """A connected client; with ``wait``, retry while no daemon answers yet (one that is starting)."""
    import time

    from ..sdk import Client, NoDaemonError

    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            return Client(state).connect()
        except NoDaemonError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _print_links(st: dict[str, Any], state: str | None) -> None:
    """Sync and peer lines of ``kestrel status``, with the retention warnings of the sync status file."""
    from .._internal.paths import resolve_state_dir
    from ..errors import KestrelError
    from ..sync.state import read_status

    sync = st.get("sync")
    if sync:
        print(
            f"sync     {'connected' if sync['connected'] else 'offline'}: {sync['acked']} of "
            f"{sync['ledger_size']} records acknowledged (backlog {sync['backlog']}, {sync['rate']:.1f} records/s)"
        )
    peers = st.get("peers")
    if peers:
        refused = sum(peers["refused"].values())
        print(f"peers    {peers['received']} received, {peers['waiting']} waiting, {refused} refused")
    if st.get("links_error"):
        print(f"warning  {st['links_error']}")
    warnings = list(sync["warnings"]) if sync else []
    try:
        saved = read_status(resolve_state_dir(state))
    except KestrelError as exc:
        saved, warnings = None, warnings + [exc.message]
    for w in saved.warnings if saved else ():
        if w not in warnings:
            warnings.append(w)
    for w in warnings:
        print(f"warning  {w}")


def _sim(args: argparse.Namespace, extra: list[str]) -> int:
    from ..sdk import Client

    with Client(args.state) as client:
        if args.list:
            for pin in client.sim_list():
                print(
                    f"{pin['pin']:<8} {pin['chip']}:{pin['line']:<3} {pin['role']:<7} {pin['name']:<16} "
                    f"level={pin['level']}"
                )
            return 0
        if args.pin is None or args.value is None:
            raise UsageError("give a pin and a value: kestrel sim GPIO17 1 (or kestrel sim --list)")
        r = client.sim_drive(args.pin, args.value)
    print(f"drove {r['pin']} ({r['chip']}:{r['line']}) to {r['value']}", file=sys.stdout)
    return 0

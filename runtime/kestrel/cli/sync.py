"""``kestrel sync status``, ``kestrel collector run|status|verify|export``, ``kestrel agent-connect``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ._common import add_state_arg as _state
from ._common import state_from

__all__ = ["register"]

COLLECTOR_DB_ENV = "KESTREL_COLLECTOR_DB"


def register(sub: Any) -> None:
    s = sub.add_parser("sync", help="ledger sync over MQTT: status")
    ssub = s.add_subparsers(dest="sync_command", metavar="SUBCOMMAND")
    s.set_defaults(func=lambda args, extra: (s.print_help(), 64)[1])
    st = ssub.add_parser("status", help="connected/offline, backlog, last acknowledged offset, rate")
    _state(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_sync_status)

    c = sub.add_parser("collector", help="the fleet collector: receive, verify and store agents' ledgers")
    csub = c.add_subparsers(dest="collector_command", metavar="SUBCOMMAND")
    c.set_defaults(func=lambda args, extra: (c.print_help(), 64)[1])
    run = csub.add_parser("run", help="subscribe to kestrel/+/ledger/batch and store verified records")
    run.add_argument("--broker", required=True, metavar="HOST:PORT")
    _db(run)
    run.add_argument("--group", help="share the fleet with other collectors ($share/GROUP/...)")
    run.add_argument("--client-id", help="MQTT client id (default kestrel-collector[-GROUP])")
    run.add_argument("--username")
    run.add_argument("--password-file", help="file holding the broker password")
    run.add_argument(
        "--resend-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="ask an agent to resend when its verified prefix is stuck below held records this long (default 30)",
    )
    run.add_argument("--duration", type=float, help=argparse.SUPPRESS)  # tests: stop after N seconds
    run.set_defaults(func=_collector_run)
    cst = csub.add_parser("status", help="agents, verified and pending records, refusals, forks")
    _db(cst)
    cst.add_argument("--json", action="store_true")
    cst.set_defaults(func=_collector_status)
    ver = csub.add_parser("verify", help="re-verify an agent's stored log from scratch")
    ver.add_argument("--agent", required=True, metavar="DID")
    _db(ver)
    ver.set_defaults(func=_collector_verify)
    exp = csub.add_parser("export", help="write an agent's verified log (read by `kestrel audit verify --export`)")
    exp.add_argument("--agent", required=True, metavar="DID")
    exp.add_argument("file")
    _db(exp)
    exp.set_defaults(func=_collector_export)
    srv = csub.add_parser("serve", help="read-only web view of the fleet (needs the `collector` extra)")
    _db(srv)
    srv.add_argument(
        "--listen",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8765; any non-loopback address needs --token-file)",
    )
    srv.add_argument("--token-file", metavar="FILE", help="file (mode 0600) holding the token every request must carry")
    srv.set_defaults(func=_collector_serve)

    ac = sub.add_parser("agent-connect", help="trust a peer agent's messages (its AgentID)")
    ac.add_argument("peer", nargs="?", metavar="PEER_DID")
    ac.add_argument("--name", help="a label for the peer")
    ac.add_argument("--remove", action="store_true", help="remove PEER_DID from the trust list")
    ac.add_argument("--list", action="store_true", help="print the trust list")
    _state(ac)
    ac.set_defaults(func=_agent_connect)


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="PATH|URL",
        help="collector database: a SQLite file or postgresql://USER@HOST:PORT/DB "
        f"(default ${COLLECTOR_DB_ENV} or ~/.local/share/kestrel/collector.db)",
    )


def _open_store(args: argparse.Namespace, *, must_exist: bool = True) -> Any:
    """The collector store named by --db (a SQLite path or a postgresql:// URL)."""
    from ..errors import UsageError
    from ..sync.collector.store import is_server_url, open_store

    spec = str(
        args.db
        or os.environ.get(COLLECTOR_DB_ENV)
        or Path(os.path.expanduser("~")) / ".local" / "share" / "kestrel" / "collector.db"
    )
    if must_exist and not is_server_url(spec) and not Path(spec).exists():
        raise UsageError(
            f"no collector database at {spec}", hint="run `kestrel collector run --db PATH` first, or pass --db"
        )
    return open_store(spec)


def _ago(t: float) -> str:
    d = max(0.0, time.time() - t)
    return f"{d:.0f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago"


# -- sync status ------------------------------------------------------------------------------
def _sync_status(args: argparse.Namespace, extra: list[str]) -> int:
    from ..sync.state import OffsetStore, read_status

    state_dir = state_from(args)
    status = _live_status(state_dir) or read_status(state_dir)
    if status is None:
        try:
            from ..identity import load_identity

            did = load_identity(state_dir).did
            offset = OffsetStore(state_dir).load(did)
        except Exception:
            offset = None
        doc: dict[str, Any] = {"state": "never-run", "acked": offset.acked if offset else 0}
        if args.json:
            print(json.dumps(doc))
        else:
            print("sync: has not run (no MQTT broker configured, or the daemon never started)")
            print(f"last acknowledged offset: {doc['acked']}")
        return 0
    stale = time.time() - status.updated > 30 or not _alive(status.pid)
    state = "stopped" if stale else ("connected" if status.connected else "offline")
    if args.json:
        print(json.dumps({"state": state, **status.to_json()}))
        return 0
    print(f"sync: {state} (updated {_ago(status.updated)})")
    print(f"agent:       {status.agent}")
    print(f"acknowledged: {status.acked} of {status.ledger_size} records (backlog {status.backlog})")
    print(f"rate:         {status.rate:.1f} records/s")
    if status.retention_limit:
        print(f"flash:        {status.ledger_bytes} of {status.retention_limit} bytes allowed by the retention policy")
    if status.first_seq:
        print(f"pruned:       records 0..{status.first_seq - 1} (the ledger keeps {status.first_seq} on)")
    for w in status.warnings:
        print(f"warning: {w}")
    return 0


def _live_status(state_dir: Path) -> Any:
    """The running daemon's sync status (None: no daemon, or it runs no sync)."""
    from ..sync.state import SyncStatus
    from .through import daemon_client

    client = daemon_client(state_dir)
    if client is None:
        return None
    with client:
        doc = client.status().get("sync")
    if not isinstance(doc, dict):
        return None
    doc = dict(doc)
    doc.pop("backlog", None)
    doc["warnings"] = tuple(doc.get("warnings", ()))
    return SyncStatus(**doc)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- collector --------------------------------------------------------------------------------
def _collector_run(args: argparse.Namespace, extra: list[str]) -> int:
    import logging
    import signal
    import threading

    from .._internal.fsutil import read_bytes
    from ..errors import UsageError
    from ..sync.collector.service import CollectorService, parse_broker

    host, port = parse_broker(args.broker)
    password = read_bytes(args.password_file, what="password file").decode().strip() if args.password_file else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    store = _open_store(args, must_exist=False)
    if not 0.1 <= args.resend_after <= 86400:
        raise UsageError(f"--resend-after {args.resend_after} is out of range", hint="give 0.1 to 86400 seconds")
    svc = CollectorService(
        store,
        host=host,
        port=port,
        group=args.group,
        client_id=args.client_id,
        username=args.username,
        password=password,
        resend_after_s=args.resend_after,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"collector: subscribing to {svc.topic} on {host}:{port}, storing in {store.location}", file=sys.stderr)
    svc.start()
    try:
        done.wait(args.duration)
    finally:
        svc.stop()
        store.close()
    c = svc.counters
    print(
        f"collector: {c.messages} messages, {c.verified} records verified, {c.duplicates} duplicates, "
        f"{c.refused} refused, {c.forks} forks",
        file=sys.stderr,
    )
    return 0


def _collector_status(args: argparse.Namespace, extra: list[str]) -> int:
    from ..sync.collector.core import CollectorCore

    store = _open_store(args)
    try:
        rows = store.summaries()
        unknown = [r for r in store.rejections() if r.did == "?"]
        core = CollectorCore(store, clock=time.time)
        gaps = {r.did: core.gap(r.did) for r in rows}
        if args.json:
            print(
                json.dumps(
                    {
                        "agents": [{**r.__dict__, "gap": gaps[r.did]} for r in rows],
                        "unattributed_rejections": len(unknown),
                    }
                )
            )
            return 0
        if not rows:
            print("no agents yet")
        for r in rows:
            flag = "  FORKED" if r.forks else ""
            print(
                f"{r.did}  verified {r.verified}  pending {r.pending}  refused {r.rejections}  forks {r.forks}  "
                f"last seen {_ago(r.last_seen)}{flag}"
            )
            if r.base:
                print(
                    f"  BASE: the agent pruned records before they were synced; verified from its signed base at "
                    f"{r.base} ({r.records} records stored)"
                )
            if gap := gaps[r.did]:
                lo, hi = gap
                print(
                    f"  GAP: records {lo}..{hi} missing; later records are held unverified (if they do not come "
                    "after a resend, the agent pruned or skipped them: see its ledger.pruned / sync.skipped records)"
                )
        if unknown:
            print(f"{len(unknown)} messages on malformed topics refused")
        return 0
    finally:
        store.close()


def _collector_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import DataError
    from ..sync.collector.evidence import verify_runs

    store = _open_store(args)
    try:
        verified = verify_runs(store, args.agent)
        forks, rejections = store.forks(args.agent), store.rejections(args.agent)
        for v in verified:
            first = f", records {v.first_seq}..{v.size - 1} from the agent's signed base" if v.first_seq else ""
            print(
                f"{args.agent}: {v.size - v.first_seq} records verified against the signed checkpoint of size "
                f"{v.signed_size}{first} (root {v.root.hex()})"
            )
        for r in rejections:
            print(f"refused: seq {r.seq if r.seq is not None else '-'}  {r.reason}: {r.detail}  sha256 {r.digest}")
        for f in forks:
            print(f"FORK at size {f.size}: {f.detail} ({_ago(f.time)})")
        if forks:
            raise DataError(
                f"{len(forks)} forked checkpoint(s) signed by {args.agent} are held as evidence",
                hint="the agent's key signed two histories; treat the agent as compromised",
            )
        return 0
    finally:
        store.close()


def _collector_export(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import atomic_write
    from ..errors import DataError
    from ..sync.collector.evidence import export_run, runs

    store = _open_store(args)
    try:
        got = runs(store, args.agent)
        if not got:
            raise DataError(
                f"the collector holds no verified records of {args.agent}",
                hint="`kestrel collector status` lists the agents it has",
            )
        data, verified = export_run(store, args.agent, got[-1])  # the newest run: from the newest base on
    finally:
        store.close()
    atomic_write(Path(args.file), data, mode=0o644)
    print(
        f"wrote {verified.size - verified.first_seq} verified records of {args.agent} to {args.file}", file=sys.stderr
    )
    return 0


def _collector_serve(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..errors import UsageError
    from ..sync.collector.service import parse_broker

    try:
        host, port = parse_broker(args.listen.replace("localhost", "127.0.0.1"))
    except UsageError:
        raise UsageError(
            f"invalid --listen address {args.listen!r}", hint="use HOST:PORT, e.g. 127.0.0.1:8765"
        ) from None
    token = None
    if args.token_file:
        mode = os.stat(args.token_file).st_mode if os.path.exists(args.token_file) else 0
        if mode & 0o077:
            raise UsageError(f"token file {args.token_file} is readable by others", hint=f"chmod 600 {args.token_file}")
        token = read_bytes(args.token_file, what="token file", max_size=4096).decode(errors="replace").strip()
        if len(token) < 16:
            raise UsageError(
                f"the token in {args.token_file} is shorter than 16 characters",
                hint="python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE",
            )
    from ..sync.collector.web import create_app, is_loopback

    if token is None and not is_loopback(host):
        raise UsageError(
            f"listening on {host} (not loopback) needs a token",
            hint="pass --token-file FILE (mode 0600), or listen on 127.0.0.1",
        )
    try:
        import uvicorn
    except ImportError:
        raise UsageError(
            "the web view needs uvicorn and starlette", hint="pip install 'kestrel-sovereign[collector]'"
        ) from None
    store = _open_store(args)
    try:
        app = create_app(store, token=token, location=getattr(store, "location", ""))
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, server_header=False, proxy_headers=False
        )
        print(
            f"collector serve: http://{host}:{port}/ (read-only{', token required' if token else ''})",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.Server(config).run()
    finally:
        store.close()
    return 0


# -- agent-connect ------------------------------------------------------------------------------
def _agent_connect(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import UsageError
    from ..sync.peers.trust import add_peer, load_trust_list, remove_peer

    state_dir = state_from(args)
    if args.list:
        for p in load_trust_list(state_dir).peers:
            print(f"{p.did}  {p.name or '-'}  added {p.added_at}")
        return 0
    if not args.peer:
        raise UsageError("give the peer's AgentID", hint="kestrel agent-connect did:key:z6Mk... [--name NAME]")
    from ..identity import PublicKey, load_identity
    from .through import recording_ledger

    PublicKey.from_did(args.peer)  # a malformed AgentID fails here, before the keystore is unlocked
    me = load_identity(state_dir)
    if args.peer == me.did:
        raise UsageError("that is this agent's own AgentID", hint="give the other agent's AgentID")
    with recording_ledger(state_dir) as ledger:  # first: a trust change is always recorded
        if args.remove:
            if not remove_peer(state_dir, args.peer):
                raise UsageError(f"{args.peer} is not in the trust list")
            ledger.append("peer.untrusted", {"peer": args.peer})
            print(f"removed {args.peer} from the trust list")
            return 0
        peer, added = add_peer(state_dir, args.peer, name=args.name)
        if added:
            ledger.append("peer.trusted", {"peer": peer.did, "name": peer.name})
            print(f"trusted {peer.did}" + (f" ({peer.name})" if peer.name else ""))
        else:
            print(f"{peer.did} is already trusted (since {peer.added_at})")
    return 0

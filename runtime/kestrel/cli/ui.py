"""``kestrel ui token``: access tokens of the daemon's local web UI (docs/ui.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._common import add_state_arg, state_from

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    ui = sub.add_parser("ui", help="the local web UI: access tokens (docs/ui.md)").add_subparsers(
        dest="ui_command", metavar="COMMAND", required=True
    )
    p = ui.add_parser(
        "token",
        help="create a web UI access token (printed once), or list / revoke them",
        description="The token is printed once; only its SHA-256 is stored "
        "(STATE/data/ui/tokens.json). Give it to the browser's sign-in page or send "
        "it as 'Authorization: Bearer TOKEN'.",
    )
    p.add_argument(
        "--expires",
        default="30d",
        metavar="WHEN",
        help="a duration like 12h or 30d (default), or an RFC 3339 UTC time; at most 366 days",
    )
    p.add_argument("--label", default="", help="a note to recognise the token by (e.g. 'kitchen tablet')")
    p.add_argument("--list", action="store_true", help="list the tokens (ids, labels, expiry), not their secrets")
    p.add_argument("--revoke", metavar="ID", help="revoke a token by its id (ends its sign-ins too)")
    add_state_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_token)


def _token(args: argparse.Namespace, extra: list[str]) -> int:
    from ..daemon.ui.tokens import TokenFile
    from ..errors import UsageError
    from ._common import parse_expiry

    state = state_from(args)
    if not (state / "identity").is_dir():
        raise UsageError(f"no agent in {state}", hint="create one with `kestrel init-agent`, or pass --state")
    tokens = TokenFile(state)
    now = time.time()
    if args.list:
        listed = tokens.describe(now=now)
        if args.json:
            print(json.dumps(listed, indent=2))
        for t in [] if args.json else listed:
            until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t["expires"]))
            print(f"{t['id']}  {'expired' if t['expired'] else 'expires'} {until}  {t['label']}")
        return 0
    if args.revoke:
        if not tokens.revoke(args.revoke):
            raise UsageError(f"no UI token with id {args.revoke!r}", hint="kestrel ui token --list shows them")
        print(f"revoked UI token {args.revoke}")
        return 0
    issued = tokens.issue(ttl_s=parse_expiry(args.expires, now) - now, now=now, label=args.label)
    e = issued.entry
    if args.json:
        print(json.dumps({"token": issued.token, "id": e.id, "expires": e.expires, "label": e.label}))
    else:
        print(issued.token)
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.expires))
        print(
            f"(web UI token {e.id}, valid until {until}; shown once, only its hash is kept in {tokens.path})",
            file=sys.stderr,
        )
    return 0

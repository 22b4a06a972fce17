"""``kestrel policy check|explain`` and ``kestrel set-policy``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ._common import add_state_arg, parse_extra_args, state_from

__all__ = ["register", "parse_extra_args", "report_lint"]


def register(sub: Any) -> None:
    pol = sub.add_parser("policy", help="check a policy file or explain a decision")
    psub = pol.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    pol.set_defaults(func=lambda args, extra: (pol.print_help(), 64)[1])

    p = psub.add_parser(
        "check",
        help="report every error in a policy file, with line and column",
        description="Errors make the policy unusable (exit 2); warnings name actions and "
        "argument keys the runtime does not know, and, with --config, actuators the device "
        "does not have and proposals the policy never allows.",
    )
    p.add_argument("file")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the device config the policy is for: check actuator names "
        "and the actions its triggers and schedules propose",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    p.set_defaults(func=_check)

    p = psub.add_parser(
        "explain",
        help="decide an action without running it: print the decision and rule",
        description="Example: kestrel policy explain --action send_email --to bob@example.com. "
        "Repeat an option to pass a list.",
    )
    p.add_argument("--action", required=True)
    p.add_argument("--policy", metavar="FILE", help="policy file (default: the device's active policy)")
    p.add_argument("--at", type=float, help="decide as at this unix time (default: now)")
    add_state_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_explain, accepts_extra=True)

    p = sub.add_parser(
        "set-policy",
        help="build, sign with the local owner key and apply a policy bundle",
        description="One step for the owner at the device: kestrel set-policy policy.yaml",
    )
    p.add_argument("file")
    add_state_arg(p)
    p.add_argument(
        "--key",
        metavar="FILE",
        help="owner key (default $KESTREL_OWNER_KEY or "
        "~/.config/kestrel/owner/owner.key; created, and trusted, if neither it nor a trust root exist)",
    )
    p.add_argument("--passphrase-file", help="owner key passphrase (else $KESTREL_OWNER_PASSPHRASE or a prompt)")
    p.add_argument("--expires", default="30d", help="bundle expiry (default 30d)")
    p.set_defaults(func=_set_policy)


def device_facts(config: str) -> Any:
    """What the device config at ``config`` offers a policy (for :func:`kestrel.policy.lint.lint_policy`)."""
    from ..daemon.main import load_config
    from ..policy.lint import DeviceFacts

    cfg = load_config(config)
    proposals = tuple((f"trigger {t.name!r}", t.action) for t in cfg.triggers) + tuple(
        (f"schedule {s.name!r}", s.action) for s in cfg.schedules
    )
    return DeviceFacts(source=config, actuators={a.name: a.kind for a in cfg.actuators}, proposals=proposals)


def report_lint(data: bytes, source: str, *, config: str | None = None) -> int:
    """Print the policy's warnings (``FILE:LINE:COL: warning: ...``) to stderr; return how many."""
    from ..policy.lint import lint_policy

    warnings = lint_policy(data, device=device_facts(config) if config else None)
    for w in warnings:
        print(f"{source}:{w}", file=sys.stderr)
    return len(warnings)


def _check(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..policy import PolicyError, parse_policy

    data = read_bytes(args.file, what="policy", max_size=1 << 20)
    try:
        policy = parse_policy(data, source=args.file)
    except PolicyError as exc:
        for issue in exc.issues:
            print(f"{args.file}:{issue}", file=sys.stderr)
        print(f"kestrel: {len(exc.issues)} error(s) in {args.file}", file=sys.stderr)
        return exc.exit_code
    warned = report_lint(data, args.file, config=args.config)
    rules = sum(len(r) for r in policy.allow.values()) + len(policy.deny)
    print(
        f"{args.file}: ok ({rules} rules, {len(policy.allow)} actions allowed, sha256:{policy.digest})"
        + (f", {warned} warning(s)" if warned else "")
    )
    return 1 if warned and args.strict else 0


def _explain(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..ota.apply import active_policy
    from ..policy import ActionRequest, Policy, PolicyState, parse_policy
    from ..policy.evaluate import evaluate

    call_args = parse_extra_args(extra)
    policy: Policy | None
    if args.policy:
        policy = parse_policy(read_bytes(args.policy, what="policy", max_size=1 << 20), source=args.policy)
        state = PolicyState()
    else:
        from ..policy.engine import PolicyEngine

        state_dir = state_from(args)
        found = active_policy(state_dir)
        policy = found[0] if found else None
        state = PolicyEngine.read_state(state_dir)
    d = evaluate(policy, ActionRequest(args.action, call_args), state, args.at if args.at else time.time())
    if args.json:
        print(
            json.dumps(
                {
                    "allowed": d.allowed,
                    "action": d.action,
                    "rule": d.rule,
                    "reason": d.reason,
                    "policy": d.policy_digest,
                    "args_digest": d.args_digest,
                }
            )
        )
    else:
        print(f"{'ALLOW' if d.allowed else 'DENY'} {d.action}: rule {d.rule}: {d.reason}")
    return 0 if d.allowed else 1


def _set_policy(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..errors import UsageError
    from ..identity import load_identity
    from ..ota.apply import current_counter
    from ..ota.build import make_bundle
    from ..ota.bundle import sign_bundle
    from ..ota.errors import TrustRootError
    from ..ota.owner import create_owner_key, default_owner_key, owner_passphrase
    from ..ota.store import OtaDir
    from ..policy import parse_policy
    from ._common import parse_expiry
    from .ota import apply_bundle_bytes, load_owner, print_applied
    from .through import ledger_view

    # Cheap checks first: nothing is asked for and nothing is written until they all pass.
    state = state_from(args)
    policy = read_bytes(args.file, what="policy", max_size=1 << 20)
    parse_policy(policy, source=args.file)  # report errors against the user's file, before anything
    agent = load_identity(state).did  # "no agent identity" before an owner key or a trust root is made
    now = time.time()
    expires = parse_expiry(args.expires, now)
    report_lint(policy, args.file)
    ota = OtaDir(state)
    key = Path(args.key or default_owner_key())
    try:
        root = ota.trust_root()
    except TrustRootError as exc:
        if exc.code != "no-root" or key.exists():
            raise
        root = None
    if root is not None:
        pub = key.with_name(key.name + ".pub")
        did = pub.read_text().strip() if pub.is_file() else None
        if did is not None and did not in root.owners:
            raise UsageError(
                f"the owner key {key} ({did}) is not in this device's trust root",
                hint=f"use --key with one of the trusted owner keys (`kestrel trust show --state {state}` lists them)",
            )
        signer = load_owner(args, str(key))
    else:
        # First use on a device with no owner yet: create the owner key and trust it (TOFU).
        signer = create_owner_key(key, owner_passphrase(args.passphrase_file, confirm=True))
        ota.init_root([signer.public_key.did], 1)
        print(f"created owner key {key} ({signer.public_key.did}) and trusted it on this device", file=sys.stderr)
    # The counter is read from the ledger's files (no lock needed): the bundle is built here, where
    # the owner key is, and applied by the running daemon, or here when none runs.
    counter, _ = current_counter(ota, ledger_view(state))
    bundle = sign_bundle(
        make_bundle(policy=policy, counter=counter + 1, now=now, expires=expires, agents=[agent]), signer
    )
    res, via_daemon = apply_bundle_bytes(state, bundle, now=now, source="set-policy")
    print_applied(res, via_daemon=via_daemon)
    return 0

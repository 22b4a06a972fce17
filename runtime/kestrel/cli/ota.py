"""``kestrel owner|trust|bundle|ota``: owner keys, the device trust root, bundles, A/B apply."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ._common import add_state_arg as _state
from ._common import parse_expiry, state_from
from .through import daemon_client, ledger_view, open_ledger, through_daemon_or_ledger

__all__ = ["register", "load_owner", "apply_bundle_bytes", "print_applied"]


def register(sub: Any) -> None:
    owner = _group(sub, "owner", "owner signing keys (kept on the owner's machine)")
    p = owner.add_parser("init", help="create an owner Ed25519 key, encrypted at rest; print its public key")
    _key(p)
    p.set_defaults(func=_owner_init)
    p = owner.add_parser("show", help="print the owner public key")
    _key(p)
    p.add_argument(
        "--bls",
        action="store_true",
        help="print the owner's BLS key entry for a trust root "
        "(JSON, for `trust init|rotate --bls-key FILE`; needs the private key)",
    )
    p.set_defaults(func=_owner_show)

    trust = _group(sub, "trust", "the device's trust root of owner keys (k of n)")
    p = trust.add_parser("show", help="print the trust root")
    _state(p)
    p.set_defaults(func=_trust_show)
    p = trust.add_parser("init", help="install trust root version 1 (provisioning)")
    p.add_argument("--owner", action="append", required=True, metavar="PUBKEY", help="owner did:key; repeatable")
    p.add_argument("--threshold", type=int, default=1, help="owner signatures needed (default 1)")
    p.add_argument("--group", action="append", default=[], help="a group this device belongs to; repeatable")
    _bls_key_arg(p)
    _state(p)
    p.set_defaults(func=_trust_init)
    p = trust.add_parser(
        "rotate",
        help="make the next trust root, signed by old and new owner keys",
        description="Builds root version N+1 (N from --state or --from), signs it with every "
        "--key given, then installs it (--state) or writes it (--out).",
    )
    p.add_argument("--owner", action="append", required=True, metavar="PUBKEY", help="new owner did:key; repeatable")
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--key", action="append", default=[], metavar="FILE", help="owner key that signs; repeatable")
    p.add_argument("--passphrase-file", help="passphrase for the keys (else $KESTREL_OWNER_PASSPHRASE or a prompt)")
    p.add_argument("--from", dest="from_root", metavar="FILE", help="current root file (instead of --state)")
    p.add_argument("--out", metavar="FILE", help="write the signed root here instead of installing it")
    _bls_key_arg(p)
    _state(p)
    p.set_defaults(func=_trust_rotate)
    p = trust.add_parser("sign", help="add an owner signature to a root file")
    p.add_argument("file")
    _key(p)
    p.set_defaults(func=_trust_sign)
    p = trust.add_parser("apply", help="install a signed next trust root on the device")
    p.add_argument("file")
    _state(p)
    p.set_defaults(func=_trust_apply)

    bundle = _group(sub, "bundle", "build, sign and verify OTA bundles")
    p = bundle.add_parser("build", help="build an unsigned bundle")
    p.add_argument("--policy", required=True, metavar="FILE")
    p.add_argument("--model", action="append", default=[], metavar="FILE")
    p.add_argument("--counter", type=int, required=True, help="security counter (must grow)")
    p.add_argument("--expires", default="30d", help="RFC 3339 UTC time or a duration like 30d (default)")
    p.add_argument("--target", action="append", default=[], metavar="DID", help="agent DID; repeatable")
    p.add_argument("--group", action="append", default=[], help="target group; repeatable")
    p.add_argument("--version", dest="label", default=None, help="human version label")
    p.add_argument("-o", "--out", required=True, metavar="FILE")
    p.set_defaults(func=_bundle_build)
    p = bundle.add_parser("sign", help="add an owner signature to a bundle (in place unless -o)")
    p.add_argument("file")
    _key(p)
    p.add_argument(
        "--bls",
        action="store_true",
        help="add the signature to the bundle's one BLS aggregate "
        "approval instead (the trust root must list the owner's BLS key; default: Ed25519)",
    )
    p.add_argument("-o", "--out", metavar="FILE")
    p.set_defaults(func=_bundle_sign)
    p = bundle.add_parser("verify", help="verify a bundle against a trust root")
    p.add_argument("file")
    p.add_argument("--trust", metavar="ROOT", help="trust root file")
    p.add_argument("--agent", metavar="DID", help="agent to check the targets for (default: the device's)")
    p.add_argument("--counter", type=int, default=0, help="counter to check against (default: the device's)")
    _state(p)
    p.set_defaults(func=_bundle_verify)

    ota = _group(sub, "ota", "apply, inspect and roll back bundles on this device")
    p = ota.add_parser("apply", help="verify and activate a bundle file")
    p.add_argument("file")
    _state(p)
    p.set_defaults(func=_ota_apply)
    p = ota.add_parser("status", help="active and previous slot, counter, trust root")
    p.add_argument("--json", action="store_true")
    _state(p)
    p.set_defaults(func=_ota_status)
    p = ota.add_parser("rollback", help="switch back to the previous bundle")
    _state(p)
    p.set_defaults(func=_ota_rollback)


def _group(sub: Any, name: str, help: str) -> Any:
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=lambda args, extra: (p.print_help(), 64)[1])
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def _bls_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bls-key",
        action="append",
        default=[],
        metavar="FILE",
        help="an owner's BLS key entry (from `kestrel owner show --bls`): that owner may approve "
        "bundles in a BLS aggregate (docs/bundle-format.md); repeatable",
    )


def _bls_keys(files: list[str]) -> dict[str, dict[str, str]] | None:
    from ..errors import UsageError

    out = {}
    for f in files:
        try:
            obj = json.loads(_read(f, "BLS key entry"))
            out[obj["did"]] = {"pk": obj["pk"], "pop": obj["pop"]}
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{f} is not a BLS key entry", hint="make one with: kestrel owner show --bls") from None
    return out or None


def _key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key", metavar="FILE", help="owner key file (default $KESTREL_OWNER_KEY or ~/.config/kestrel/owner/owner.key)"
    )
    p.add_argument("--passphrase-file", help="owner key passphrase (else $KESTREL_OWNER_PASSPHRASE or a prompt)")


def apply_bundle_bytes(state_dir: Path, data: bytes, *, now: float, source: str) -> tuple[dict[str, Any], bool]:
    """Apply a signed bundle through the daemon, else here (with the device's TPM counter, if any)."""
    from ..daemon.admin import applied_json
    from ..ota.apply import apply_bundle
    from ..ota.tpmcounter import device_tpm_counter

    return through_daemon_or_ledger(
        state_dir,
        lambda client: client.ota_apply(data),
        lambda ledger: applied_json(
            apply_bundle(state_dir, data, ledger=ledger, now=now, source=source, tpm=device_tpm_counter(state_dir))
        ),
    )


def load_owner(args: argparse.Namespace, key: str | None = None) -> Any:
    from ..ota.owner import default_owner_key, load_owner_signer, owner_passphrase

    path = Path(key or getattr(args, "key", None) or default_owner_key())
    return load_owner_signer(path, owner_passphrase(args.passphrase_file))


def _read(path: str, what: str) -> bytes:
    from .._internal.fsutil import read_bytes

    return read_bytes(path, what=what, max_size=512 * 1024 * 1024)


def _write_out(path: str | Path, data: bytes) -> None:
    from .._internal.fsutil import atomic_write

    atomic_write(Path(path), data, mode=0o644)


# -- owner ------------------------------------------------------------------
def _owner_init(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.owner import create_owner_key, default_owner_key, owner_passphrase

    path = Path(args.key or default_owner_key())
    signer = create_owner_key(path, owner_passphrase(args.passphrase_file, confirm=True))
    print(signer.public_key.did)
    print(f"owner key written to {path} (encrypted; keep it and its passphrase off the device)", file=sys.stderr)
    return 0


def _owner_show(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.owner import default_owner_key

    if args.bls:
        from ..ota.bls_approval import owner_bls_entry

        signer = load_owner(args)
        print(json.dumps({"did": signer.public_key.did, **owner_bls_entry(signer)}))
        return 0
    pub = Path(args.key or default_owner_key())
    pub = pub.with_name(pub.name + ".pub")
    print(_read(str(pub), "owner public key").decode().strip())
    return 0


# -- trust ------------------------------------------------------------------
def _trust_show(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.store import OtaDir

    root = OtaDir(state_from(args)).trust_root()
    print(
        json.dumps(
            {
                "version": root.version,
                "threshold": root.threshold,
                "owners": list(root.owners),
                "signed_by": list(root.signed_by),
            },
            indent=2,
        )
    )
    return 0


def _trust_init(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.store import OtaDir

    ota = OtaDir(state_from(args))
    root = ota.init_root(args.owner, args.threshold, bls=_bls_keys(args.bls_key))
    if args.group:
        ota.write_groups(args.group)
    print(f"trust root version {root.version}: {root.threshold} of {len(root.owners)} owner key(s)")
    return 0


def _trust_rotate(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import UsageError
    from ..ota.root import parse_root, root_envelope, root_payload, sign_root
    from ..ota.store import OtaDir

    if args.from_root:
        current = parse_root(_read(args.from_root, "trust root"))
    else:
        current = OtaDir(state_from(args)).trust_root()
    env = root_envelope(root_payload(args.owner, args.threshold, current.version + 1, bls=_bls_keys(args.bls_key)))
    if not args.key:
        raise UsageError("give the owner keys that sign the new root with --key (old and new owners)")
    for key in args.key:
        env = sign_root(env, load_owner(args, key))
    if args.out:
        _write_out(args.out, env)
        print(f"trust root version {current.version + 1} written to {args.out}")
        return 0
    return _install_root(state_from(args), env)


def _install_root(state_dir: Path, env: bytes) -> int:
    from ..daemon.admin import install_root

    res, _ = through_daemon_or_ledger(
        state_dir, lambda client: client.trust_apply(env), lambda ledger: install_root(state_dir, env, ledger=ledger)
    )
    print(
        f"trust root rotated: version {res['from_version']} -> {res['version']} "
        f"({res['threshold']} of {len(res['owners'])} owner keys)"
    )
    return 0


def _trust_sign(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.root import sign_root

    _write_out(args.file, sign_root(_read(args.file, "trust root"), load_owner(args)))
    return 0


def _trust_apply(args: argparse.Namespace, extra: list[str]) -> int:
    return _install_root(state_from(args), _read(args.file, "trust root"))


# -- bundle -----------------------------------------------------------------
def _bundle_build(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..ota.build import build_bundle_files
    from ..policy.parse import MAX_POLICY_BYTES
    from .policy import report_lint

    now = time.time()
    # warnings only: build_bundle_files checks the policy itself
    report_lint(read_bytes(args.policy, what="policy", max_size=MAX_POLICY_BYTES), args.policy)
    data = build_bundle_files(
        policy=Path(args.policy),
        models=[Path(m) for m in args.model],
        counter=args.counter,
        now=now,
        expires=parse_expiry(args.expires, now),
        agents=args.target,
        groups=args.group,
        label=args.label,
    )
    _write_out(args.out, data)
    print(f"bundle written to {args.out} ({len(data)} bytes, unsigned; sign it with `kestrel bundle sign`)")
    return 0


def _bundle_sign(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.bundle import sign_bundle, sign_bundle_bls

    signer = load_owner(args)
    sign = sign_bundle_bls if args.bls else sign_bundle
    _write_out(args.out or args.file, sign(_read(args.file, "bundle"), signer))
    print(f"signed by {signer.public_key.did}{' (BLS aggregate)' if args.bls else ''}")
    return 0


def _bundle_verify(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import UsageError
    from ..ota.apply import current_counter
    from ..ota.bundle import format_time, verify_bundle
    from ..ota.root import parse_root
    from ..ota.store import OtaDir

    data = _read(args.file, "bundle")
    groups: tuple[str, ...] = ()
    counter, cdigest = args.counter, None
    if args.trust:
        root = parse_root(_read(args.trust, "trust root"))
        agent = args.agent
    else:
        state = state_from(args)
        ota = OtaDir(state)
        root, groups = ota.trust_root(), ota.groups()
        if not args.counter:
            counter, cdigest = current_counter(ota, ledger_view(state))
        agent = args.agent
        if agent is None:
            from ..identity import load_identity

            agent = load_identity(state).did
    if agent is None:
        raise UsageError("--trust needs --agent DID (the agent the bundle must target)")
    vb = verify_bundle(
        data, root=root, now=time.time(), agent_id=agent, groups=groups, counter=counter, counter_digest=cdigest
    )
    m = vb.manifest
    print(f"OK bundle {vb.digest}\n  version {m.version}, counter {m.counter}, expires {format_time(m.expires)}")
    print(f"  signed by {len(vb.signed_by)} of {len(root.owners)} owner keys (threshold {root.threshold})")
    for e in m.contents:
        print(f"  {e.role:6} {e.name} {e.size} bytes sha256:{e.sha256}")
    return 0


# -- ota --------------------------------------------------------------------
def _ota_apply(args: argparse.Namespace, extra: list[str]) -> int:
    """Streamed from the file (never read whole here): the daemon, or the bundle-file path, checks the
    size and the head before the contents (kestrel.ota.bundlefile)."""
    import os

    from ..daemon.admin import applied_json
    from ..ota.bundlefile import apply_bundle_file, digest_fd, open_bundle
    from ..ota.tpmcounter import device_tpm_counter

    state = state_from(args)
    if daemon_client(state) is None:  # applied here: refusals (a FIFO, oversize, bad head) are recorded
        with open_ledger(state) as ledger:
            res = applied_json(
                apply_bundle_file(
                    state, args.file, ledger=ledger, now=time.time(), source="cli", tpm=device_tpm_counter(state)
                )
            )
        print_applied(res, via_daemon=False)
        return 0
    fd, st = open_bundle(args.file)
    try:
        res, via_daemon = through_daemon_or_ledger(
            state,
            lambda client: client.ota_apply_file(fd, st.st_size, digest_fd(fd, st.st_size)),
            lambda ledger: applied_json(
                apply_bundle_file(
                    state,
                    args.file,
                    ledger=ledger,
                    now=time.time(),
                    source="cli",
                    tpm=device_tpm_counter(state),
                    opened=(fd, st),
                )
            ),
        )
    finally:
        os.close(fd)
    print_applied(res, via_daemon=via_daemon)
    return 0


def print_applied(res: dict[str, Any], *, via_daemon: bool) -> None:
    how = " (through the running daemon)" if via_daemon else ""
    if not res["changed"]:
        print(f"bundle {res['bundle'][:16]} is already active (slot {res['slot']}){how}")
    else:
        print(
            f"applied bundle {res['bundle'][:16]} version {res['version']} counter {res['counter']} "
            f"into slot {res['slot']}; policy sha256:{res['policy'][:16]}{how}"
        )


def _ota_status(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ota.apply import ota_status

    state = state_from(args)
    st = ota_status(state, ledger=ledger_view(state), now=time.time())
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"counter: {st['counter']}")
    root = st.get("trust_root")
    print(
        "trust root: "
        + (
            f"version {root['version']}, {root['threshold']} of {len(root['owners'])}"
            if root
            else st.get("trust_root_error", "none")
        )
    )
    if "pointer_error" in st:
        print(f"slot pointer DAMAGED: {st['pointer_error']} (every action is denied until a bundle is applied)")
    for key in ("active", "previous"):
        s = st[key]
        if s is None:
            print(f"{key}: none")
        elif "error" in s:
            print(f"{key}: slot {s['slot']} DAMAGED: {s['error']}")
        else:
            print(
                f"{key}: slot {s['slot']} bundle {s['bundle'][:16]} version {s['version']} "
                f"counter {s['counter']}{' (expired)' if s['expired'] else ''}"
            )
    return 0


def _ota_rollback(args: argparse.Namespace, extra: list[str]) -> int:
    from ..daemon.admin import applied_json
    from ..ota.apply import rollback

    state = state_from(args)
    res, _ = through_daemon_or_ledger(
        state,
        lambda client: client.ota_rollback(reason="operator"),
        lambda ledger: applied_json(rollback(state, ledger=ledger, reason="operator")),
    )
    print(f"rolled back to slot {res['slot']}: bundle {res['bundle'][:16]} version {res['version']}")
    return 0

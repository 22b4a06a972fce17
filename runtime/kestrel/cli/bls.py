"""``kestrel identity bls [--create | --rotate]``: the agent's BLS key for group decisions (docs/quorum.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import add_passphrase_file_arg, add_state_arg

__all__ = ["register_bls"]


def register_bls(isub: Any) -> None:
    p = isub.add_parser(
        "bls",
        help="show, create or rotate the agent's BLS key (group decisions)",
        description="The agent's BLS12-381 key signs its votes in quorum-gated decisions. "
        "It is certified by the identity key (the AgentID never changes), sealed like it "
        "(file keystore or TPM), and every creation or rotation is a `bls.key` ledger record.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--create", action="store_true", help="create the agent's first BLS key")
    mode.add_argument(
        "--rotate",
        action="store_true",
        help="replace the BLS key with a new one (the old secret is deleted; votes under it "
        "are refused once peers have seen the new one)",
    )
    p.add_argument("--tcti", help="TPM connection of a TPM identity (default: the identity's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_state_arg(p)
    add_passphrase_file_arg(p)
    p.set_defaults(func=_bls)


def _bls(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.paths import StateLayout, resolve_state_dir
    from ..errors import UsageError
    from ..identity import load_identity, open_signer
    from ..identity.bls_store import bls_dir, create_bls_key, current_serial
    from ..identity.secrets import read_passphrase_file
    from .through import daemon_client

    state = resolve_state_dir(args.state)
    identity = load_identity(state)
    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    serial = current_serial(state)
    if not (args.create or args.rotate):
        if serial == 0:
            raise UsageError(f"{identity.name} has no BLS key", hint="create one: kestrel identity bls --create")
        return _print(args, state, serial, identity.did)
    if args.create and serial:
        raise UsageError(
            f"{identity.name} already has a BLS key (serial {serial})",
            hint="replace it with: kestrel identity bls --rotate",
        )
    if args.rotate and not serial:
        raise UsageError(f"{identity.name} has no BLS key to rotate", hint="create one: kestrel identity bls --create")
    client = daemon_client(state)
    if client is not None:
        client.close()
        raise UsageError(
            "the daemon is running and holds the current BLS key in memory",
            hint="stop `kestrel run`, run this again, then start the daemon",
        )
    from ..ledger import Ledger

    signer = open_signer(state, passphrase=passphrase, tcti=args.tcti)
    try:
        ledger = Ledger.open(StateLayout(state).ledger, signer=signer)
        try:
            key = create_bls_key(state, signer, ledger=ledger, passphrase=passphrase, tcti=args.tcti)
        finally:
            ledger.close()
    finally:
        close = getattr(signer, "close", None)
        if close is not None:
            close()
    assert bls_dir(state).is_dir()
    return _print(args, state, key.serial, identity.did)


def _print(args: argparse.Namespace, state: Path, serial: int, did: str) -> int:
    from ..identity.bls import verify_certificate
    from ..identity.bls_store import bls_dir
    from ..identity.secrets import read_private_file

    cert = verify_certificate(
        read_private_file(bls_dir(state) / f"cert-{serial}.bin", what="BLS certificate"), agent=did
    )
    info = {
        "agent": did,
        "serial": serial,
        "public_key": cert.public_key.raw.hex(),
        "fingerprint": cert.public_key.fingerprint,
        "certificate_sha256": cert.digest,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"BLS key {serial} of {did}\n  public key   {info['public_key']}\n  certificate  sha256 {cert.digest}")
    return 0

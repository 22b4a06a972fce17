"""``kestrel init-agent`` and ``kestrel identity show|backup|restore``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._common import add_passphrase_file_arg, state_from
from ._common import add_state_arg as _state

__all__ = ["register"]

BACKUP_PASSPHRASE_ENV = "KESTREL_BACKUP_PASSPHRASE"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init-agent",
        help="create the agent's identity and state directory",
        description="Create the agent's key pair (in the TPM with --tpm, else an "
        "encrypted file keystore) and its state directory. Refuses if an identity exists.",
    )
    p.add_argument("--name", required=True, help="the agent's human-readable name")
    p.add_argument("--tpm", action="store_true", help="create a P-256 key inside the TPM")
    p.add_argument(
        "--tcti",
        help="TPM connection, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321 "
        "(default: $KESTREL_TCTI, the board profile's tpm_tcti, device:/dev/tpmrm0)",
    )
    p.add_argument("--algorithm", choices=("ed25519", "p256"), help="file keystore: ed25519 (default) or p256")
    _state(p)
    _protection(p)
    p.add_argument(
        "--owner",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="owner public key (did:key) allowed to sign OTA bundles; repeatable",
    )
    p.add_argument("--threshold", type=int, help="owner signatures needed per bundle (default 1)")
    p.set_defaults(func=_init_agent)

    ident = sub.add_parser("identity", help="show, back up or restore the agent identity")
    isub = ident.add_subparsers(dest="identity_command", metavar="SUBCOMMAND")
    ident.set_defaults(func=lambda args, extra: (ident.print_help(), 64)[1])

    show = isub.add_parser("show", help="print the AgentID, algorithm, backend and creation time")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--did",
        action="store_true",
        help='print only the AgentID (did:key), e.g. for --agent "$(kestrel identity show --did)"',
    )
    _state(show)
    show.set_defaults(func=_show)

    backup = isub.add_parser("backup", help="write an encrypted backup of a file keystore")
    backup.add_argument("file", help="backup file to create (never overwritten)")
    _state(backup)
    add_passphrase_file_arg(backup)
    backup.add_argument(
        "--backup-passphrase-file",
        help=f"file holding the backup passphrase (else ${BACKUP_PASSPHRASE_ENV} or a prompt)",
    )
    backup.set_defaults(func=_backup)

    restore = isub.add_parser("restore", help="install an identity from a backup (same AgentID)")
    restore.add_argument("file", help="backup file made by `kestrel identity backup`")
    _state(restore)
    _protection(restore)
    restore.add_argument("--backup-passphrase-file", help="file holding the backup passphrase")
    restore.set_defaults(func=_restore)

    from .bls import register_bls  # kestrel identity bls: the BLS key for group decisions

    register_bls(isub)


def _protection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", help="file holding the new keystore's passphrase")
    p.add_argument(
        "--machine-bound",
        action="store_true",
        help="no passphrase: bind the key to this machine (/etc/machine-id + a random secret)",
    )


def _new_key_protection(args: argparse.Namespace) -> tuple[bytes | None, bool]:
    """(passphrase, machine_bound) for a new file keystore; machine-bound when unattended."""
    from ..errors import UsageError
    from ..identity.secrets import PASSPHRASE_ENV, read_passphrase_file

    if args.machine_bound:
        if args.passphrase_file:
            raise UsageError("--machine-bound and --passphrase-file exclude each other")
        return None, True
    if args.passphrase_file:
        return read_passphrase_file(args.passphrase_file), False
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode("utf-8"), False
    if sys.stdin is not None and sys.stdin.isatty():
        return None, False  # prompted for (twice) when the keystore is written
    print(
        "kestrel: no passphrase given and no terminal to ask for one: the key is machine-bound "
        "(it opens only on this machine; use --passphrase-file to choose a passphrase instead)",
        file=sys.stderr,
    )
    return None, True


def _tcti(args: argparse.Namespace) -> str | None:
    """--tcti, else $KESTREL_TCTI, else the detected board profile's tpm_tcti, else the default."""
    if args.tcti or os.environ.get("KESTREL_TCTI"):
        return args.tcti or os.environ["KESTREL_TCTI"]
    from ..errors import KestrelError

    try:
        from ..io.boards import load_profile

        return load_profile("auto").tpm_tcti
    except (ImportError, KestrelError):
        return None  # resolve_tcti falls back to device:/dev/tpmrm0


def _owners(args: argparse.Namespace) -> dict[str, Any] | None:
    from ..errors import UsageError
    from ..identity import KeyFormatError, PublicKey

    if not args.owner:
        if args.threshold is not None:
            raise UsageError("--threshold needs at least one --owner")
        return None
    owners = []
    for owner in args.owner:
        try:
            owners.append(PublicKey.from_did(owner).did)
        except KeyFormatError as exc:
            raise KeyFormatError(
                f"--owner {owner}: {exc.message}",
                hint="owner keys are did:key strings (`kestrel owner show` prints one)",
            ) from None
    if len(set(owners)) != len(owners):
        raise UsageError("the same --owner key is given twice")
    threshold = 1 if args.threshold is None else args.threshold
    if not 1 <= threshold <= len(owners):
        raise UsageError(f"--threshold must be between 1 and the number of owners ({len(owners)})")
    return {"format": "kestrel-provisioning/1", "owners": owners, "threshold": threshold}


def _record_created(state_dir: Path, identity: Any, signer: Any) -> None:
    """Append ``agent.created`` to the agent's ledger (strict durability)."""
    from .._internal.paths import StateLayout
    from ..agent.core import created_body
    from ..ledger import Ledger

    ledger = Ledger.open(StateLayout(state_dir).ledger, signer=signer, durability="strict")
    try:
        ledger.append("agent.created", created_body(identity))
    finally:
        ledger.close()


def _init_agent(args: argparse.Namespace, extra: list[str]) -> int:
    from ..agent.core import ensure_fresh_state
    from ..errors import UsageError
    from ..identity import Algorithm, create_identity_with_signer
    from ..identity.secrets import create_private_file
    from ..identity.store import identity_dir

    state_dir = state_from(args)
    provisioning = _owners(args)
    ensure_fresh_state(state_dir)
    if args.tpm:
        if args.algorithm == "ed25519":
            raise UsageError(
                "TPMs do not do Ed25519; a TPM identity is P-256", hint="drop --algorithm or use --algorithm p256"
            )
        if args.passphrase_file or args.machine_bound:
            raise UsageError("--passphrase-file and --machine-bound apply to file keystores, not --tpm")
        identity, signer = create_identity_with_signer(
            state_dir, name=args.name, backend="tpm", algorithm=Algorithm.P256, tcti=_tcti(args)
        )
    else:
        if args.tcti:
            raise UsageError("--tcti needs --tpm")
        passphrase, machine_bound = _new_key_protection(args)
        identity, signer = create_identity_with_signer(
            state_dir,
            name=args.name,
            algorithm=Algorithm(args.algorithm or "ed25519"),
            passphrase=passphrase,
            machine_bound=machine_bound,
        )
    try:
        if provisioning is not None:
            data = (json.dumps(provisioning, indent=2) + "\n").encode()
            create_private_file(identity_dir(state_dir) / "provisioning.json", data)
        _record_created(state_dir, identity, signer)
    finally:
        close = getattr(signer, "close", None)
        if close is not None:
            close()
    print(f"Created agent {identity.name!r}")
    _print_identity(identity, state_dir)
    return 0


def _print_identity(identity: Any, state_dir: Path) -> None:
    print(f"  AgentID:    {identity.did}")
    print(f"  algorithm:  {identity.algorithm.value}")
    print(
        f"  backend:    {identity.backend} ({identity.protection})"
        + (f", tcti {identity.tcti}" if identity.tcti else "")
    )
    print(f"  created at: {identity.created_at}")
    print(f"  state:      {state_dir}")


def _show(args: argparse.Namespace, extra: list[str]) -> int:
    from ..identity import load_identity

    state_dir = state_from(args)
    identity = load_identity(state_dir)
    if args.did:
        print(identity.did)
    elif args.json:
        doc = identity.to_dict()
        doc.pop("format")
        doc["state_dir"] = str(state_dir)
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"{identity.name}")
        _print_identity(identity, state_dir)
    return 0


def _backup_passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes:
    from ..identity.secrets import read_passphrase_file, resolve_passphrase

    explicit = read_passphrase_file(args.backup_passphrase_file) if args.backup_passphrase_file else None
    return resolve_passphrase(
        explicit, what="backup", confirm=confirm, env=BACKUP_PASSPHRASE_ENV, option="--backup-passphrase-file"
    )


def _backup(args: argparse.Namespace, extra: list[str]) -> int:
    from ..errors import UsageError
    from ..identity import backup_identity, load_identity
    from ..identity.backup import not_exportable_error
    from ..identity.secrets import read_passphrase_file

    state_dir = state_from(args)
    identity = load_identity(state_dir)
    if identity.backend == "tpm":
        raise not_exportable_error(identity)
    if os.path.lexists(args.file):
        raise UsageError(f"{args.file} already exists; refusing to overwrite it", hint="choose a new backup file name")
    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    backup_identity(
        state_dir, args.file, backup_passphrase=lambda: _backup_passphrase(args, confirm=True), passphrase=passphrase
    )
    print(f"Backed up {identity.did} to {args.file}")
    print("  keep the backup passphrase safe: without it the backup cannot be opened")
    return 0


def _restore(args: argparse.Namespace, extra: list[str]) -> int:
    from ..identity.backup import install_backup, read_backup
    from ..identity.store import ensure_no_identity

    state_dir = state_from(args)
    ensure_no_identity(state_dir)
    saved, signer = read_backup(args.file, backup_passphrase=_backup_passphrase(args, confirm=False))
    passphrase, machine_bound = _new_key_protection(args)
    identity = install_backup(state_dir, saved, signer, passphrase=passphrase, machine_bound=machine_bound)
    print(f"Restored agent {identity.name!r}")
    _print_identity(identity, state_dir)
    return 0

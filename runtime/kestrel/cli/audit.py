"""``kestrel audit log|verify|export|prove|checkpoint|verify-proof``: read and check the ledger.

Reading and verifying need only the agent's public key (from
``STATE/identity/identity.json``, or ``--agent DID``), never its passphrase.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._common import add_state_arg as _state
from ._common import state_from

__all__ = ["register"]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="show, verify, export and prove the agent's ledger")
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    audit.set_defaults(func=lambda args, extra: (audit.print_help(), 64)[1])

    p = asub.add_parser("log", help="show the ledger, newest last")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records as they arrive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--kind", metavar="K", help="only records of this kind (or prefix.*)")
    p.add_argument("--since", metavar="T", help="only records since T: RFC 3339 time, unix seconds, or 10m/2h/7d ago")
    _state(p)
    p.set_defaults(func=_log)

    p = asub.add_parser("verify", help="check the whole ledger; exit 0 only if it is intact")
    _state(p)
    p.add_argument("--export", metavar="FILE", help="verify an export file instead of a state directory")
    p.add_argument("--agent", metavar="DID", help="the AgentID to verify against (required with --export)")
    p.add_argument("--trusted", metavar="FILE", help="a checkpoint note you trust: the log must extend it")
    p.add_argument("--json", action="store_true", help="machine-readable verdict on stdout, also on failure")
    p.add_argument(
        "--require-signed",
        action="store_true",
        help="fail (exit 2) if any record is not covered by a signed checkpoint, or a write is unfinished",
    )
    p.set_defaults(func=_verify)

    p = asub.add_parser("export", help="write the whole signed log to FILE (verifiable with the AgentID)")
    p.add_argument("file", help="export file to write")
    _state(p)
    p.set_defaults(func=_export)

    p = asub.add_parser(
        "prove",
        help="write an inclusion proof for one record (JSON text on stdout, or -o FILE)",
        description="kestrel audit prove 3 > proof.json writes the proof as JSON text (the "
        "record, readable, and the binary proof in base64); -o FILE.proof or --binary writes "
        "the binary proof file of docs/ledger-format.md. verify-proof reads both.",
    )
    p.add_argument("seq", type=int, help="sequence number of the record to disclose")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the proof here instead of stdout (JSON when FILE ends in .json, else binary)",
    )
    p.add_argument("--binary", action="store_true", help="write the binary proof file (not JSON)")
    _state(p)
    p.set_defaults(func=_prove)

    p = asub.add_parser("checkpoint", help="print the latest signed checkpoint (keep it to detect truncation later)")
    _state(p)
    p.set_defaults(func=_checkpoint)

    p = asub.add_parser("verify-proof", help="check an inclusion proof and show the disclosed record")
    p.add_argument("file", help="proof file made by `kestrel audit prove` (JSON or binary)")
    p.add_argument("--agent", metavar="DID", required=True, help="the AgentID the proof must be signed by")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_verify_proof)

    from .quorum_audit import register_quorum_audit  # kestrel audit quorum (docs/quorum.md)

    register_quorum_audit(asub)


def _state_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    from .._internal.paths import StateLayout
    from ..errors import TransportError

    root = state_from(args)
    if not root.is_dir():
        raise TransportError(
            f"state directory {root} does not exist or is not a directory",
            hint="pass --state DIR (the directory given to `kestrel init-agent`)",
        )
    return root, StateLayout(root).ledger


def _agent_key(state: Path) -> Any:
    from ..identity import load_identity

    return load_identity(state).public_key


def _did_key(did: str | None) -> Any:
    from ..errors import UsageError
    from ..identity.keys import PublicKey

    if not did:
        raise UsageError("--agent DID is required", hint="pass the AgentID, e.g. --agent did:key:z6Mk...")
    return PublicKey.from_did(did)


def _read(path: str, what: str) -> bytes:
    from .._internal.fsutil import read_bytes

    return read_bytes(path, what=what)


def _parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    from ..errors import UsageError

    m = _RELATIVE.match(text)
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {text!r} is not a time", hint="use e.g. 2026-11-25T10:00:00Z, 1764064800, 30m, 2h or 7d"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _fmt_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _print_record(rec: Any, *, as_json: bool) -> None:
    view = rec.to_json()
    if as_json:
        print(json.dumps(view, sort_keys=True))
    else:
        body = json.dumps(view["body"], sort_keys=True, separators=(",", ":"))
        print(f"{rec.seq:>7}  {_fmt_time(rec.time)}  {rec.kind:<20}  {body}")
    sys.stdout.flush()


def _log(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ledger.reader import RecordCursor, iter_records

    state, ledger_dir = _state_dirs(args)
    _agent_key(state)  # a directory with no agent is an error, not an empty log
    since = _parse_since(args.since)
    prefix = args.kind[:-1] if args.kind and args.kind.endswith("*") else None
    next_seq = 0
    for rec in iter_records(ledger_dir, kind=args.kind):
        next_seq = rec.seq + 1
        if since is None or rec.time >= since:
            _print_record(rec, as_json=args.json)
    if not args.follow:
        return 0
    cursor = RecordCursor(ledger_dir, next_seq)  # each poll reads only what was appended since the last
    while True:
        for rec in cursor.poll():
            if args.kind is None or rec.kind == args.kind or (prefix is not None and rec.kind.startswith(prefix)):
                if since is None or rec.time >= since:
                    _print_record(rec, as_json=args.json)
        try:
            time.sleep(0.5)
        except KeyboardInterrupt:
            return 0


def _trusted(args: argparse.Namespace, key: Any) -> Any:
    if not args.trusted:
        return None
    from ..ledger.checkpoint import verify_checkpoint

    return verify_checkpoint(_read(args.trusted, "trusted checkpoint"), key)


def _verify(args: argparse.Namespace, extra: list[str]) -> int:
    """Exit 0 if intact (docs/ledger-format.md, section 7.1); with --json the verdict is on stdout either way."""
    from ..errors import KestrelError

    try:
        verified = _verified(args)
        if args.require_signed and (verified.unsigned or verified.torn_bytes):
            from ..ledger.errors import LedgerVerificationError, Reason

            raise LedgerVerificationError(
                verified.signed_size,
                Reason.UNSIGNED,
                f"{verified.unsigned} records after the latest signed checkpoint (covering {verified.signed_size})"
                + (f" and an unfinished write of {verified.torn_bytes} bytes" if verified.torn_bytes else ""),
            )
    except KestrelError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "error": str(exc),
                        "reason": getattr(getattr(exc, "reason", None), "value", type(exc).__name__),
                        "seq": getattr(exc, "seq", None),
                    },
                    sort_keys=True,
                )
            )
            sys.stdout.flush()
        raise
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "agent": verified.did,
                    "size": verified.size,
                    "signed_size": verified.signed_size,
                    "unsigned": verified.unsigned,
                    "root": verified.root.hex(),
                    "torn_bytes": verified.torn_bytes,
                    "first_seq": verified.first_seq,
                },
                sort_keys=True,
            )
        )
    else:
        print(f"ledger intact: {verified.size} records, {verified.signed_size} covered by the latest signed checkpoint")
        print(f"agent: {verified.did}")
        print(f"root:  {verified.root.hex()}")
        if verified.first_seq:
            print(
                f"pruned: records 0..{verified.first_seq - 1} were dropped; verified from the signed base "
                f"at {verified.first_seq} (signed by the agent's own key)"
            )
    if verified.unsigned:
        print(
            f"warning: the last {verified.unsigned} records are not yet covered by a signed checkpoint "
            "(the agent signs them while it runs, or when it next opens its ledger; "
            "--require-signed makes this a failure)",
            file=sys.stderr,
        )
    if verified.torn_bytes:
        print(
            f"warning: ignored an unfinished write of {verified.torn_bytes} bytes at the end "
            "(never acknowledged; the agent saves and cuts it when it next opens its ledger)",
            file=sys.stderr,
        )
    return 0


def _verified(args: argparse.Namespace) -> Any:
    from ..errors import UsageError

    if args.export:
        if args.state:
            raise UsageError("give either --state or --export, not both")
        from ..ledger.export import verify_export

        key = _did_key(args.agent)
        return verify_export(_read(args.export, "ledger export"), key, trusted=_trusted(args, key))
    from ..ledger.reader import verify_dir

    state, ledger_dir = _state_dirs(args)
    key = _agent_key(state)
    if args.agent and _did_key(args.agent) != key:
        raise UsageError(f"--agent {args.agent} is not the identity in {state} ({key.did})")
    return verify_dir(ledger_dir, key, trusted=_trusted(args, key))


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import atomic_write
    from ..ledger.reader import export_chunks

    state, ledger_dir = _state_dirs(args)
    verified, chunks = export_chunks(ledger_dir, _agent_key(state))
    atomic_write(Path(args.file), chunks, mode=0o644)  # streamed: the export is never held in memory
    kept = verified.signed_size - verified.first_seq
    print(
        f"exported {kept} signed records of {verified.did} to {args.file}"
        + (f" (records {verified.first_seq}.. after the base of the pruned ledger)" if verified.first_seq else "")
    )
    if verified.unsigned:
        print(f"note: {verified.unsigned} newer records are not signed yet and were left out", file=sys.stderr)
    return 0


def _prove(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import atomic_write
    from ..errors import UsageError
    from ..ledger.reader import prove

    binary = args.binary or (args.output is not None and not args.output.endswith(".json"))
    if binary and args.output is None and sys.stdout.isatty():
        raise UsageError(
            "refusing to write a binary proof to the terminal",
            hint=f"redirect it: kestrel audit prove {args.seq} --binary > record-{args.seq}.proof",
        )
    state, ledger_dir = _state_dirs(args)
    key = _agent_key(state)
    data = prove(ledger_dir, key, args.seq)
    if not binary:
        data = _proof_json(data, key)
    if args.output:
        atomic_write(Path(args.output), data, mode=0o644)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


PROOF_JSON_FORMAT = "kestrel-inclusion-proof+json/1"
_MAX_PROOF_JSON = 4 << 20


def _proof_json(data: bytes, key: Any) -> bytes:
    """The text form of a proof file: the record for reading, the proof file itself in base64."""
    import base64

    from ..ledger.export import verify_proof

    rec = verify_proof(data, key).record
    doc = {
        "format": PROOF_JSON_FORMAT,
        "agent": key.did,
        "seq": rec.seq,
        "record": rec.to_json(),
        "proof": base64.b64encode(data).decode("ascii"),
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _verified_proof(data: bytes, key: Any) -> Any:
    """Verify a proof file in either form. Of the JSON form only the base64 ``proof`` is trusted, and
    its readable ``record`` must be the proven record (an edited copy for the eye is refused)."""
    import base64
    import binascii

    from ..ledger.export import ProofFileError, verify_proof

    if not data.lstrip().startswith(b"{"):
        return verify_proof(data, key)
    try:
        doc = json.loads(data[:_MAX_PROOF_JSON])
        if not isinstance(doc, dict) or doc.get("format") != PROOF_JSON_FORMAT or not isinstance(doc.get("proof"), str):
            raise ValueError(f"not a {PROOF_JSON_FORMAT} document")
        raw = base64.b64decode(doc["proof"], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ProofFileError(
            f"not a Kestrel inclusion proof: {exc}",
            hint="proof files are made by `kestrel audit prove SEQ > proof.json`",
        ) from None
    proof = verify_proof(raw, key)
    if doc.get("record") != json.loads(json.dumps(proof.record.to_json())):
        raise ProofFileError(
            "the record shown in the proof's JSON is not the proven record (it was edited): not proven",
            hint="ask for the proof again; only its 'proof' field is signed",
        )
    return proof


def _checkpoint(args: argparse.Namespace, extra: list[str]) -> int:
    from ..ledger.errors import LedgerError
    from ..ledger.reader import verify_dir

    state, ledger_dir = _state_dirs(args)
    verified = verify_dir(ledger_dir, _agent_key(state))
    if verified.checkpoint is None:
        raise LedgerError(
            "the ledger has no signed checkpoint yet", hint="start the agent once so that it signs its log"
        )
    sys.stdout.write(verified.checkpoint.note.decode())
    return 0


def _verify_proof(args: argparse.Namespace, extra: list[str]) -> int:
    proof = _verified_proof(_read(args.file, "inclusion proof"), _did_key(args.agent))
    rec, cp = proof.record, proof.checkpoint
    if args.json:
        print(
            json.dumps(
                {"ok": True, "agent": args.agent, "record": rec.to_json(), "tree_size": cp.size, "root": cp.root.hex()},
                sort_keys=True,
            )
        )
    else:
        print(f"proof valid: record {rec.seq} is in the log of {args.agent} (signed tree of {cp.size} records)")
        _print_record(rec, as_json=False)
    return 0

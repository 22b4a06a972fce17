"""``kestrel audit quorum FILE --agent DID --member DID ...``: check group decisions (docs/quorum.md)
from one agent's ledger export, or from an inclusion proof of one decision, with AgentIDs alone."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register_quorum_audit"]


def register_quorum_audit(asub: Any) -> None:
    p = asub.add_parser(
        "quorum",
        help="verify the quorum decisions in a ledger export or an inclusion proof",
        description="Checks the export (or proof) against the proposer's AgentID, then each "
        "approved quorum.decided record: the signers' BLS key certificates against their "
        "AgentIDs, proofs of possession, and the aggregate signature over the decision message.",
    )
    p.add_argument("file", help="`kestrel audit export` file, or a `kestrel audit prove` file of one decision")
    p.add_argument("--agent", metavar="DID", required=True, help="the proposing agent's AgentID")
    p.add_argument(
        "--member",
        metavar="DID",
        action="append",
        default=[],
        help="an AgentID the auditor accepts as a quorum member; repeatable (default: any)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_quorum)


def _records(data: bytes, agent: str) -> list[Any]:
    from ..identity.keys import PublicKey
    from ..ledger.export import EXPORT_MAGIC, verify_export
    from ..ledger.frame import RECORD, Frame, iter_frames
    from ..ledger.record import decode_record
    from .audit import _verified_proof

    key = PublicKey.from_did(agent)
    if not data.startswith(EXPORT_MAGIC):
        return [_verified_proof(data, key).record]
    verify_export(data, key)
    return [
        decode_record(f.payload)
        for f in iter_frames(data, len(EXPORT_MAGIC))
        if isinstance(f, Frame) and f.type == RECORD
    ]


def _quorum(args: argparse.Namespace, extra: list[str]) -> int:
    from .._internal.fsutil import read_bytes
    from ..errors import DataError, UsageError
    from ..policy.quorum import QuorumMessageError, verify_decision

    records = _records(read_bytes(args.file, what="export or proof"), args.agent)
    decided = [r for r in records if r.kind == "quorum.decided"]
    if not decided:
        raise UsageError(
            f"{args.file} holds no quorum.decided record",
            hint="export the proposing agent's ledger: kestrel audit export FILE",
        )
    out, bad = [], 0
    for r in decided:
        row: dict[str, Any] = {
            "seq": r.seq,
            "id": r.body.get("id"),
            "action": r.body.get("action"),
            "outcome": r.body.get("outcome"),
            "reason": r.body.get("reason"),
        }
        if r.body.get("outcome") == "allow":
            try:
                v = verify_decision(r.body, members=args.member or None)
                row.update(ok=True, signers=list(v.signers), threshold=v.request.threshold)
            except QuorumMessageError as exc:
                bad += 1
                row.update(ok=False, error=exc.message)
        out.append(row)
    if args.json:
        print(json.dumps({"agent": args.agent, "decisions": out, "ok": bad == 0}, sort_keys=True))
    else:
        for row in out:
            if row["outcome"] != "allow":
                print(f"record {row['seq']}: {row['action']} denied by the group ({row['reason']})")
            elif row["ok"]:
                print(
                    f"record {row['seq']}: {row['action']} approved by {len(row['signers'])} of the quorum "
                    f"(threshold {row['threshold']}): aggregate signature valid"
                )
            else:
                print(f"record {row['seq']}: {row['action']}: INVALID: {row['error']}")
    if bad:
        raise DataError(
            f"{bad} quorum decision(s) in {args.file} do not verify",
            hint="the record was altered, or a signer is not who it claims to be",
        )
    return 0

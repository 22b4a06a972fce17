"""Test vectors for docs/ledger-format.md, computed from a fixed Ed25519 seed.

``python -m tests.ledger.vectors`` prints the block that the document embeds;
test_vectors.py checks that the document still matches this computation.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric import ed25519

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.base import BASE_MAGIC, encode_base
from kestrel.ledger.checkpoint import key_id, sign_checkpoint
from kestrel.ledger.export import encode_export, encode_proof
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.merkle import Frontier, inclusion_proof
from kestrel.ledger.record import ZERO_HASH, encode_record, leaf_hash

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1
RECORDS = [
    (1764000000.0, "agent.created", {"name": "porch-bot"}),
    (1764000001.5, "policy.decision", {"action": "send_email", "allowed": False, "rule": "default-deny"}),
    (1764000002.25, "sensor.fault", {"pin": 4, "value": None, "raw": b"\x00\xff"}),
]


def compute() -> dict[str, str]:
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(SEED))
    pk = signer.public_key
    out = {"seed": SEED.hex(), "public key": pk.raw.hex(), "did": pk.did, "key id": key_id(pk).hex()}
    prev, raws, leaves, frontier = ZERO_HASH, [], [], Frontier()
    for seq, (t, kind, body) in enumerate(RECORDS):
        raw = encode_record(seq=seq, time=t, kind=kind, body=body, prev=prev)
        prev = leaf_hash(raw)
        raws.append(raw)
        leaves.append(prev)
        frontier.append(prev)
        out[f"record {seq}"] = raw.hex()
        out[f"leaf {seq}"] = prev.hex()
    out["frame 0"] = encode_frame(RECORD, raws[0]).hex()
    out["root 3"] = frontier.root().hex()
    cp = sign_checkpoint(signer, size=3, root=frontier.root())
    out["checkpoint note (base64)"] = base64.b64encode(cp.note).decode()
    out["inclusion path 1"] = " ".join(h.hex() for h in inclusion_proof(1, leaves))
    out["export"] = b"".join(encode_export(cp, raws)).hex()
    out["proof 1"] = encode_proof(1, leaves, raws[1], cp).hex()
    base_frontier = Frontier()
    for leaf in leaves[:2]:
        base_frontier.append(leaf)
    base_cp = sign_checkpoint(signer, size=2, root=base_frontier.root())
    base = encode_base(frontier=base_frontier, prev=leaves[1], checkpoint=base_cp)
    out["base file 2"] = (BASE_MAGIC + base.payload).hex()
    out["pruned export"] = b"".join(encode_export(cp, raws[2:], base=base)).hex()
    return out


def block() -> str:
    return "\n".join(f"{k}: {v}" for k, v in compute().items())


if __name__ == "__main__":
    print(block())

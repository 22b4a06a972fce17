"""Test vectors for docs/ledger-format.md, computed from a fixed Ed25519 seed.

``python -m tests.ledger.vectors`` prints the block that the document embeds;
test_vectors.py checks that the document still matches this computation.
"""

from __future__ import annotations

import base64
import functools
import struct

import msgpack
from cryptography.hazmat.primitives.asymmetric import ed25519

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger.base import BASE_MAGIC, encode_base
from kestrel.ledger.checkpoint import key_id, sign_checkpoint
from kestrel.ledger.export import encode_export, encode_proof
from kestrel.ledger.frame import RECORD, encode_frame
from kestrel.ledger.merkle import Frontier, inclusion_proof
from kestrel.ledger.record import ZERO_HASH, encode_record, leaf_hash

packb = functools.partial(msgpack.packb, use_bin_type=True)
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


def _rec(
    *,
    head: bytes = b"\x85",
    seq: bytes = b"\x00",
    time: bytes = b"\xcb" + struct.pack(">d", 1764000000.0),
    kind: bytes = packb("agent.created"),
    body: bytes = packb({"name": "porch-bot"}),
    prev: bytes = b"\xc4\x20" + ZERO_HASH,
    tail: bytes = b"",
) -> bytes:
    """Record 0 of the vectors above, assembled from encoded parts (each test vector breaks one)."""
    k = packb
    return head + k("seq") + seq + k("time") + time + k("kind") + kind + k("body") + body + k("prev") + prev + tail


def negative() -> dict[str, str]:
    """Records a verifier must refuse (docs/ledger-format.md, section 1.2): name -> hex."""
    k = packb
    vectors = {
        "duplicate key": _rec(head=b"\x86", tail=k("seq") + b"\x00"),
        "float32 time": _rec(time=b"\xca" + struct.pack(">f", 1764000000.0)),
        "nan time": _rec(time=b"\xcb" + bytes.fromhex("7ff8000000000000")),
        "int time": _rec(time=k(1764000000)),
        "ext in body": _rec(body=b"\x81" + k("name") + b"\xd4\x05\x78"),
        "timestamp in body": _rec(body=b"\x81" + k("name") + b"\xd6\xff" + (1764000000).to_bytes(4, "big")),
        "kind of 65 characters": _rec(kind=k("a" * 65)),
        "kind with a final newline": _rec(kind=k("agent.created\n")),
        "invalid utf-8": _rec(body=b"\x81" + k("name") + b"\xa9porch-bo\xff"),
        "seq in a longer form": _rec(seq=b"\xcc\x00"),
        "seq in a signed form": _rec(seq=b"\xd0\x00"),
        "str8 for a short str": _rec(body=b"\x81" + k("name") + b"\xd9\x09porch-bot"),
        "map16 for five entries": _rec(head=b"\xde\x00\x05"),
        "int map key in body": _rec(body=b"\x81\x01" + k("porch-bot")),
        "bin map key in body": _rec(body=b"\x81\xc4\x04name" + k("porch-bot")),
        "bytes after the map": _rec(tail=b"\xc0"),
        "prev of 31 bytes": _rec(prev=b"\xc4\x1f" + ZERO_HASH[:31]),
        "sixth key": _rec(head=b"\x86", tail=k("more") + b"\xc0"),
    }
    return {name: raw.hex() for name, raw in vectors.items()}


def block() -> str:
    return "\n".join(f"{k}: {v}" for k, v in compute().items())


def negative_block() -> str:
    return "\n".join(f"{k}: {v}" for k, v in negative().items())


if __name__ == "__main__":
    print(block())
    print()
    print(negative_block())

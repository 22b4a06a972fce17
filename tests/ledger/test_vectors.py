"""docs/ledger-format.md's test vectors match the implementation and verify on their own."""

from __future__ import annotations

import base64
from pathlib import Path

from kestrel.identity.keys import PublicKey
from kestrel.ledger.base import BASE_MAGIC, verify_base
from kestrel.ledger.checkpoint import verify_checkpoint
from kestrel.ledger.export import verify_export, verify_proof
from kestrel.ledger.frame import iter_frames
from kestrel.ledger.merkle import tree_root, verify_inclusion
from kestrel.ledger.record import decode_record, leaf_hash

from .vectors import compute

DOC = Path(__file__).resolve().parents[2] / "docs" / "ledger-format.md"


def doc_vectors() -> dict[str, str]:
    text = DOC.read_text()
    block = text.split("<!-- vectors:begin -->", 1)[1].split("<!-- vectors:end -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ": " in ln and not ln.startswith("```")]
    return dict(ln.split(": ", 1) for ln in lines)


def test_doc_vectors_equal_the_implementation():
    assert doc_vectors() == compute()


def test_doc_vectors_verify_independently():
    v = doc_vectors()
    pk = PublicKey.from_did(v["did"])
    assert pk.raw.hex() == v["public key"]
    leaves = []
    for i in range(3):
        raw = bytes.fromhex(v[f"record {i}"])
        assert leaf_hash(raw).hex() == v[f"leaf {i}"] and decode_record(raw).seq == i
        leaves.append(leaf_hash(raw))
    assert tree_root(leaves).hex() == v["root 3"]
    frame = next(iter_frames(bytes.fromhex(v["frame 0"])))
    assert frame.payload.hex() == v["record 0"]
    cp = verify_checkpoint(base64.b64decode(v["checkpoint note (base64)"]), pk)
    assert (cp.size, cp.root.hex()) == (3, v["root 3"])
    verify_inclusion(leaves[1], 1, 3, [bytes.fromhex(h) for h in v["inclusion path 1"].split()], cp.root)
    assert verify_export(bytes.fromhex(v["export"]), pk).size == 3
    assert verify_proof(bytes.fromhex(v["proof 1"]), pk).record.body["action"] == "send_email"
    base_file = bytes.fromhex(v["base file 2"])
    assert base_file[:8] == BASE_MAGIC
    base = verify_base(base_file[8:], pk)
    assert (base.size, base.prev, base.checkpoint.root) == (2, leaves[1], tree_root(leaves[:2]))
    pruned = verify_export(bytes.fromhex(v["pruned export"]), pk)
    assert (pruned.first_seq, pruned.size, pruned.root.hex()) == (2, 3, v["root 3"])

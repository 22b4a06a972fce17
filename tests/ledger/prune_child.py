"""Child process for the prune crash test: append and prune in a loop until killed.

Usage: python -m tests.ledger.prune_child LEDGER_DIR SEED_HEX. Prints ``acked SEQ`` after each
receipted append and ``pruned FIRST`` after each prune, flushed at once.
"""

from __future__ import annotations

import sys

from cryptography.hazmat.primitives.asymmetric import ed25519

from kestrel.identity.keys import SoftwareSigner
from kestrel.ledger import Ledger


def main() -> None:
    signer = SoftwareSigner(ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sys.argv[2])))
    led = Ledger.open(sys.argv[1], signer=signer, max_segment_bytes=1500, durability="strict")
    i = 0
    while True:
        for _ in range(8):
            r = led.append("action.result", {"i": i, "pad": "p" * 40})
            print(f"acked {r.seq}", flush=True)
            i += 1
        res = led.prune(led.size - 20, reason="test")
        print(f"pruned {res.new_first_seq}", flush=True)


if __name__ == "__main__":
    main()

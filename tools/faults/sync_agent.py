"""A syncing agent process for the sync fault tests (tests/sync/test_sync_faults.py).

Opens the agent's ledger (batched), appends records until the ledger holds ``--records``, and syncs
it to the broker with LedgerSync over the runtime's MqttBridge. It is meant to be SIGKILLed and
restarted; it prints ``appended N`` and ``acked N`` lines, and exits 0 once everything is
acknowledged if ``--exit-when-synced`` is given. The passphrase comes from $KESTREL_PASSPHRASE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import msgpack


def _trace(bridge) -> None:
    """Print every publish and its PUBACK (debugging the fault tests)."""
    orig = bridge.publish

    async def publish(topic, payload, **kw):
        doc = msgpack.unpackb(payload)
        tag = f"{doc['start']}+{len(doc['records'])}"
        print(f"pub {tag}", flush=True)
        try:
            mid = await orig(topic, payload, **kw)
        except BaseException as exc:
            print(f"fail {tag} {type(exc).__name__}", flush=True)
            raise
        print(f"ack {tag} mid {mid}", flush=True)
        return mid

    bridge.publish = publish


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--records", type=int, required=True)
    p.add_argument("--chunk", type=int, default=50, help="records appended per step")
    p.add_argument("--pause", type=float, default=0.005, help="seconds between steps")
    p.add_argument("--exit-when-synced", action="store_true")
    args = p.parse_args(argv)

    from kestrel._internal.paths import StateLayout
    from kestrel.identity import open_signer
    from kestrel.io.mqtt import MqttBridge
    from kestrel.ledger.ledger import Ledger
    from kestrel.sync.collector.service import parse_broker
    from kestrel.sync.config import SyncConfig
    from kestrel.sync.sync import LedgerSync

    host, port = parse_broker(args.broker)
    ledger = Ledger.open(StateLayout(args.state).ledger, signer=open_signer(args.state))
    cfg = SyncConfig(poll_s=0.05, retry_s=0.2, offset_s=0.05, status_s=0.5, ack_timeout_s=5.0)
    bridge = MqttBridge(
        host,
        port,
        agent_id=ledger.public_key.did,
        session_expiry=3600,
        reconnect_initial=0.05,
        reconnect_max=0.5,
        max_payload=256 * 1024,
    )
    if os.environ.get("SYNC_AGENT_TRACE"):
        _trace(bridge)
    async with bridge:
        sync = LedgerSync(ledger, bridge, config=cfg, state_dir=args.state)
        await sync.start()
        last = -1
        while True:
            if ledger.size < args.records:
                n = min(args.chunk, args.records - ledger.size)
                await asyncio.gather(
                    *(ledger.append_async("action.result", {"n": i, "pad": "x" * 40}) for i in range(n))
                )
                print(f"appended {ledger.size}", flush=True)
            acked = sync.status.acked
            if acked != last:
                print(f"acked {acked}", flush=True)
                last = acked
            if args.exit_when_synced and ledger.size >= args.records and acked >= ledger.size:
                await sync.stop()
                break
            await asyncio.sleep(args.pause)
    ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

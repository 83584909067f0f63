"""One lifecycle relay in a process of its own, for the crash test:
``python lifecycle_relay_process.py DB_URL BOOTSTRAP TOPIC idempotent|plain
[--stop-at POINT --stop-after N]``. Publishes pages of 10 with a lease of 1 s.
Prints ``READY`` once started; with ``--stop-after N`` it prints ``STOPPED``
at the fault point POINT of its Nth page (``after_publish``: acknowledged,
before the checkpoint; ``before_acks``: queued, not yet acknowledged) and
hangs there, to be killed.
"""

from __future__ import annotations

import argparse
import asyncio

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.settings import Settings
from orchestrator.store import connect
from sources.lifecycle_relay import LifecycleRelay


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("producer", choices=["idempotent", "plain"])
    parser.add_argument("--stop-at", default="after_publish")
    parser.add_argument("--stop-after", type=int, default=0)
    args = parser.parse_args()
    settings = Settings(
        kafka_bootstrap=args.bootstrap,
        kafka_idempotent_producer=args.producer == "idempotent",
        lifecycle_topic=args.topic,
        lifecycle_batch=10,
        lifecycle_lease_s=1.0,
        lifecycle_poll_s=0.05,
    )
    pages = 0

    async def fault(point: str) -> None:
        nonlocal pages
        if point != args.stop_at:
            return
        pages += 1
        if args.stop_after and pages >= args.stop_after:
            print("STOPPED", flush=True)
            await asyncio.Event().wait()

    db = await connect(args.db, size=2, min_size=1)
    relay = LifecycleRelay(fault=fault)
    relay.attach(settings, db, SYSTEM_CLOCK)
    async with relay:
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

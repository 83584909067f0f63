"""A lifecycle relay alone in its own process, for the outbox scenario (as a
replica with ``ORCHESTRATOR_ROLES=worker`` and no worker slots runs it):
``python -m bench.outbox_relay DB_URL BOOTSTRAP TOPIC idempotent|plain``.
Prints ``READY`` once started; runs until terminated."""

from __future__ import annotations

import asyncio
import signal
import sys

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.settings import Settings
from orchestrator.store import connect
from sources.lifecycle_relay import LifecycleRelay


async def main(db_url: str, bootstrap: str, topic: str, producer: str) -> None:
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_idempotent_producer=producer == "idempotent",
        lifecycle_topic=topic,
    )
    db = await connect(db_url, size=2, min_size=1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    relay = LifecycleRelay()
    relay.attach(settings, db, SYSTEM_CLOCK)
    try:
        async with relay:
            print("READY", flush=True)
            await stop.wait()
    finally:
        await db.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

"""A lifecycle relay alone in its own process, for the outbox scenario (as a
replica with ``ORCHESTRATOR_ROLES=worker`` and no worker slots runs it):
``python -m bench.outbox_relay DB_URL BOOTSTRAP TOPIC idempotent|plain``.

Prints ``READY`` once started; runs until terminated. On ``SIGUSR1`` it prints
one JSON line: its CPU seconds (user + system) and the events it published so
far, so the scenario can tell the relay's CPU per event. With
``BENCH_RELAY_PROFILE=FILE`` it runs under cProfile and writes the statistics to
FILE when terminated (CPU time of each function)."""

from __future__ import annotations

import asyncio
import cProfile
import os
import signal
import sys
import time

import orjson

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.settings import Settings
from orchestrator.store import connect
from sources.lifecycle_relay import LifecycleRelay


def _report(relay: LifecycleRelay) -> None:
    used = os.times()
    reading = {"cpu_s": used.user + used.system, "published": relay.published}
    sys.stdout.buffer.write(orjson.dumps(reading) + b"\n")
    sys.stdout.flush()


async def main(db_url: str, bootstrap: str, topic: str, producer: str) -> None:
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_idempotent_producer=producer == "idempotent",
        lifecycle_topic=topic,
    )
    db = await connect(db_url, size=2, min_size=1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    relay = LifecycleRelay()
    relay.attach(settings, db, SYSTEM_CLOCK)
    loop.add_signal_handler(signal.SIGUSR1, _report, relay)
    try:
        async with relay:
            print("READY", flush=True)
            await stop.wait()
    finally:
        await db.close()


if __name__ == "__main__":
    profile_to = os.environ.get("BENCH_RELAY_PROFILE")
    # CPU time, not wall time: a relay mostly waits, and other work on the
    # machine would count in its wall time.
    profiler = cProfile.Profile(time.process_time) if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(main(*sys.argv[1:5]))
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)

"""One orchestrator process with a triggerer, for the triggerer crash test:
``python triggerer_process.py --db URL --name NAME [--clock-offset S]``.

It registers :data:`NAP` (one ``sensor.time`` task waiting until
``params.until``), runs a worker and a :class:`~orchestrator.triggerer.Triggerer`
named NAME, prints ``READY <name>`` once both run and ``ARMED <n>`` whenever
the number of waits the triggerer holds in memory changes, and stops cleanly
on SIGTERM. ``--clock-offset`` moves its clock ahead, so a restarted process
finds the waits of a killed one already due without the test waiting for them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import datetime, timedelta

import handlers.sensors_time
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, real_pause
from orchestrator.logs import configure
from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.triggerer import Triggerer

NAP = WorkflowSpec(
    name="nap_until",
    tasks=(TaskSpec(id="nap", handler="sensor.time", inputs={"until": "{{ params.until }}"}),),
)


class OffsetClock:
    """The system clock, ``offset`` ahead."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return SYSTEM_CLOCK.now() + self.offset

    async def sleep(self, seconds: float) -> None:
        await SYSTEM_CLOCK.sleep(seconds)

    def stamp(self) -> None:
        return None  # leases stay on the database's clock


def registry() -> HandlerRegistry:
    time_sensor = HandlerRegistry()
    time_sensor.register_module(handlers.sensors_time)
    return builtin_registry().merged(time_sensor)


async def report_armed(triggerer: Triggerer) -> None:
    last = -1
    while True:
        if triggerer.armed != last:
            last = triggerer.armed
            print(f"ARMED {last}", flush=True)
        await real_pause(0.05)


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(worker_slots=args.slots, poll_interval_s=0.2, roles="worker")
    clock = OffsetClock(timedelta(seconds=args.clock_offset))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Orchestrator(
        settings, args.db, registry=registry(), workflows=[NAP], clock=clock, migrate=False
    ) as orch:
        assert orch.engine is not None
        async with Triggerer(orch.engine, clock, name=args.name, horizon_s=args.horizon) as trig:
            await trig.loaded.wait()
            reporter = asyncio.create_task(report_armed(trig))
            print(f"READY {args.name}", flush=True)
            await stop.wait()
            reporter.cancel()
    print(f"STOPPED {args.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, help="database URL")
    p.add_argument("--name", required=True, help="the triggerer's name (resolved_by)")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--clock-offset", type=float, default=0.0, help="seconds ahead of real time")
    p.add_argument("--horizon", type=float, default=3600.0, help="horizon_s of the triggerer")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    configure(args.log_level)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One worker process for the crash tests: ``python worker_process.py --db URL --name NAME``.

It runs an :class:`~orchestrator.app.Orchestrator` whose registry holds the
test handler ``work``, prints ``READY <name>`` once the worker runs, and stops
cleanly on SIGTERM (or SIGINT). The tests kill, freeze and resume it.

``work`` records every execution in the ``executions`` table the test created:
a row when the handler starts, ``ended_at`` when its work is done. It uses its
own pool, so the rows are written whatever the engine later does with the
attempt's result. The orchestrator's connections carry ``application_name=<name>``
and the handler's ``<name>-handlers``, so a test can see in ``pg_stat_activity``
when the handlers are between statements, and when the process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import asyncpg

from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.logs import configure
from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings


def with_application_name(url: str, name: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}application_name={name}"


def registry(executions: asyncpg.Pool, worker: str) -> HandlerRegistry:
    reg = HandlerRegistry()

    async def work(ctx: TaskContext, ms: int = 10) -> dict[str, Any]:
        row_id = await executions.fetchval(
            "INSERT INTO executions (run_id, task_id, attempt, worker) "
            "VALUES ($1, $2, $3, $4) RETURNING id",
            ctx.run_id,
            ctx.task_id,
            ctx.attempt,
            worker,
        )
        await ctx.clock.sleep(ms / 1000)  # the workload
        await executions.execute(
            "UPDATE executions SET ended_at = clock_timestamp() WHERE id = $1", row_id
        )
        return {"worker": worker, "attempt": ctx.attempt}

    reg.register("work", work, origin=__file__)
    return reg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, help="database URL")
    p.add_argument("--name", required=True, help="lease owner name of this worker")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--lease", type=float, default=3.0, help="lease_s")
    p.add_argument("--heartbeat", type=float, default=0.5, help="heartbeat_s")
    p.add_argument("--reaper", type=float, default=0.5, help="reaper_interval_s")
    p.add_argument("--poll", type=float, default=0.2, help="poll_interval_s")
    p.add_argument("--grace", type=float, default=10.0, help="stop grace on SIGTERM, s")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    url = with_application_name(args.db, args.name)
    handler_url = with_application_name(args.db, f"{args.name}-handlers")
    settings = Settings(
        worker_slots=args.slots,
        lease_s=args.lease,
        heartbeat_s=args.heartbeat,
        reaper_interval_s=args.reaper,
        poll_interval_s=args.poll,
        roles="worker",  # nothing else (no HTTP port to collide with the other workers)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    executions = await asyncpg.create_pool(handler_url, min_size=1, max_size=args.slots + 1)
    try:
        orch = Orchestrator(
            settings,
            url,
            registry=registry(executions, args.name),
            migrate=False,
            worker_name=args.name,
        )
        await orch.start()
        try:
            print(f"READY {args.name}", flush=True)
            await stop.wait()
            print(f"STOPPING {args.name}", flush=True)
        finally:
            await orch.stop(grace_s=args.grace)
    finally:
        await executions.close()
    print(f"STOPPED {args.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.log_level)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

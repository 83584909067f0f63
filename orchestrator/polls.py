"""Poll waits: an async condition checked by the triggerer, never by a worker.

``sensor.poll`` names a registered handler (e.g. one running an SQL query or
calling an HTTP endpoint) and how often to check it. When the wait is due, the
triggerer hands it here: at most ``concurrency`` checks run at once; a truthy
result ends the wait with that result as the task's output, anything else
(falsy, or an error, which is logged) schedules the next check after the
interval, grown by ``backoff`` per check up to ``max_interval_s``, with jitter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.backoff import capped_exponential
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.context import TaskContext
from orchestrator.deferral import Resolution
from orchestrator.engine import Engine
from orchestrator.registry import HandlerRegistry
from orchestrator.store import SQL

log = logging.getLogger(__name__)


def next_delay(
    config: dict[str, Any], checks: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds until the next check after ``checks`` checks found nothing."""
    return capped_exponential(
        max(1, checks),
        initial_s=float(config.get("interval_s", 30.0)),
        max_s=float(config.get("max_interval_s") or math.inf),
        factor=float(config.get("backoff", 1.0)),
        jitter=float(config.get("jitter", 0.1)),
        rand=rand,
    )


class PollRunner:
    def __init__(
        self,
        engine: Engine,
        registry: HandlerRegistry,
        *,
        actor: str,
        concurrency: int = 32,
        rearm: Callable[[datetime, int], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.engine = engine
        self.registry = registry
        self.actor = actor
        self._slots = asyncio.Semaphore(concurrency)
        self._rearm = rearm
        self._running: dict[int, asyncio.Task[None]] = {}

    def submit(self, row: asyncpg.Record) -> None:
        """Check this due poll wait in the background (once at a time per wait)."""
        if row["id"] in self._running:
            return
        key: int = row["id"]
        task = asyncio.create_task(self._check(row), name=f"poll-{key}")
        self._running[key] = task

        def forget(_task: asyncio.Task[None]) -> None:
            self._running.pop(key, None)

        task.add_done_callback(forget)

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=5)

    async def _check(self, row: asyncpg.Record) -> None:
        config: dict[str, Any] = orjson.loads(row["config"])
        checks = int(config.get("checks", 0)) + 1
        result: Any = None
        async with self._slots:
            try:
                result = await self._call(row, config)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "poll %s of run %s task %s failed (%s: %s); checking again later",
                    config.get("check"),
                    row["run_id"],
                    row["task_id"],
                    type(exc).__name__,
                    exc,
                )
        if result:
            await self.engine.resolve(
                [
                    Resolution(
                        row["id"],
                        "success",
                        {"result": result, "checks": checks},
                        reason=f"condition met after {checks} check(s)",
                        run_id=row["run_id"],
                    )
                ],
                actor=self.actor,
            )
            return
        async with self.engine.db.pool.acquire() as conn:
            due = await conn.fetchval(
                SQL.poll_again,
                row["id"],
                next_delay(config, checks),
                checks,
                self.clock.stamp(),
            )
        if due is not None:
            # Done with this check before the next is armed: a due time that
            # comes at once (a clock moved on) must not find it still running.
            self._running.pop(row["id"], None)
            self._rearm(due, row["id"])

    async def _call(self, row: asyncpg.Record, config: dict[str, Any]) -> Any:
        name = str(config.get("check"))
        if name not in self.registry:
            raise LookupError(f"check handler {name!r} is not registered in this process")
        fn = self.registry.get(name)
        ctx = TaskContext(
            run_id=row["run_id"],
            task_id=row["task_id"],
            attempt=row["attempt"],
            workflow="",
            params={},
            upstream={},
            clock=self.clock,
        )
        inputs = config.get("inputs") or {}
        timeout = float(config.get("check_timeout_s", 30.0))
        async with asyncio.timeout(timeout):
            if self.registry.is_async(name):
                return await fn(ctx, **inputs)
            return await asyncio.to_thread(fn, ctx, **inputs)

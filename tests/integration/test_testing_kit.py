"""The test kit a user tests workflows with (``orchestrator.testing``), used
the way the README shows: two handlers, a run triggered and awaited, and a
time sensor passed by moving the manual clock instead of waiting."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from handlers import builtin_registry
from orchestrator.context import TaskContext
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.testing import WorkflowTest

ORDERS = WorkflowSpec(
    name="orders",
    tasks=(
        TaskSpec(id="extract", handler="extract_orders", inputs={"day": "{{ params.day }}"}),
        TaskSpec(
            id="settle", handler="sensor.time", inputs={"delay_s": 3600}, upstream=("extract",)
        ),
        TaskSpec(
            id="load",
            handler="load_orders",
            upstream=("settle",),
            inputs={"orders": "{{ upstream.extract.orders }}"},
        ),
    ),
)


async def extract_orders(ctx: TaskContext, *, day: str) -> dict[str, Any]:
    return {
        "orders": [{"day": day, "n": 1}, {"day": day, "n": 2}],
        "at": ctx.clock.now().isoformat(),
    }


async def load_orders(ctx: TaskContext, *, orders: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": len(orders), "at": ctx.clock.now().isoformat()}


def registry() -> HandlerRegistry:
    mine = HandlerRegistry()
    mine.register("extract_orders", extract_orders)
    mine.register("load_orders", load_orders)
    return builtin_registry().merged(mine)


async def test_a_workflow_runs_to_the_end_on_a_scratch_database(pg_admin_url: str) -> None:
    async with WorkflowTest(pg_admin_url, workflows=[ORDERS], registry=registry()) as wt:
        start = wt.manual_clock.now()
        run_id = await wt.trigger("orders", {"day": "2026-03-01"})

        # The sensor waits an hour of the test's clock: nothing moves until the test says.
        await wt.wait_for_task(run_id, "settle", "deferred")
        await wt.manual_clock.advance(timedelta(hours=1, seconds=1))
        run = await wt.wait(run_id)

    assert run.state == "success"
    assert run.outputs["load"] == {
        "rows": 2,
        "at": (start + timedelta(hours=1, seconds=1)).isoformat(),
    }
    assert run.outputs["extract"]["at"] == start.isoformat()
    assert {t: r.state for t, r in run.tasks.items()} == dict.fromkeys(
        ("extract", "settle", "load"), "success"
    )


async def test_the_scratch_database_is_gone_afterwards(pg_admin_url: str) -> None:
    wt = WorkflowTest(pg_admin_url, workflows=[ORDERS], registry=registry())
    async with wt:
        name = wt.orchestrator.db.url.rsplit("/", 1)[-1] if wt.orchestrator.db else ""
    conn = await asyncpg.connect(pg_admin_url)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) is None
    finally:
        await conn.close()

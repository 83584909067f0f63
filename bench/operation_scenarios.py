"""Operator-action scenarios: clear."""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.engine_scenarios import bench_settings
from bench.harness import Figure, scratch_database
from bench.registry import scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.engine import RunRequest
from orchestrator.operations import clear_runs
from orchestrator.run_waiter import RunWaiter
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState


async def clear(url: str, *, runs: int = 1000, batch: int = 250) -> list[Figure]:
    """``runs`` runs of a 3-task chain fail at their middle task; once the
    cause is fixed, every run is cleared (``clear_runs``, ``batch`` runs per
    transaction): the time from the first clear to the last run's success."""
    broken = True
    registry = builtin_registry()

    async def middle(ctx: TaskContext) -> dict[str, int]:
        if broken:
            raise RuntimeError("upstream provider down")
        return {"attempt": ctx.attempt}

    registry.register("bench.middle", middle)
    once = RetryPolicy(max_attempts=1)
    spec = WorkflowSpec(
        name="clear3",
        tasks=(
            TaskSpec(id="t00", handler="noop"),
            TaskSpec(id="t01", handler="bench.middle", upstream=("t00",), retry=once),
            TaskSpec(id="t02", handler="noop", upstream=("t01",)),
        ),
    )
    async with (
        scratch_database(url) as (db_url, _db),
        Orchestrator(bench_settings(), db_url, registry=registry, workflows=[spec]) as orch,
    ):
        assert orch.engine is not None and orch.db is not None
        engine = orch.engine
        async with RunWaiter(orch.db, poll_s=0.05) as waiter:
            ids = await engine.create_runs([RunRequest("clear3") for _ in range(runs)], actor="b")
            failed = await waiter.wait(ids, timeout=600)
            assert set(failed.values()) == {RunState.FAILED}, set(failed.values())
            broken = False
            started = time.perf_counter()
            for i in range(0, len(ids), batch):
                await clear_runs(engine, ids[i : i + batch], actor="bench", reason="provider back")
            cleared = time.perf_counter() - started
            states = await waiter.wait(ids, timeout=600)
            elapsed = time.perf_counter() - started
            assert set(states.values()) == {RunState.SUCCESS}, set(states.values())
    ctx: dict[str, Any] = {
        "runs": runs,
        "tasks_per_run": 3,
        "failed_task_per_run": 1,
        "runs_per_clear": batch,
        "clears_done_s": round(cleared, 3),
        "seconds": round(elapsed, 3),
    }
    return [Figure("clear", "runs_per_s", runs / elapsed, "runs/s", ">= 1500", context=ctx)]


@scenario("clear", "1,000 failed runs of a 3-task chain cleared: runs/s until all succeed")
async def _clear(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await clear(url, runs=args.runs)

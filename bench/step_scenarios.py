"""Where a chain step's time goes: chain40_steps.

A step of a sequential chain is: the handler runs; its outcome waits for the
flusher (flush wait); one transaction records it and claims the successor
(commit); the successor's handler is started (dispatch). The scenario times
those phases with the engine's completion call wrapped, so the breakdown
measures the code as it ships.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from bench.engine_scenarios import bench_settings, chain
from bench.harness import Figure, median, scratch_database
from bench.registry import scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.engine import Completion, Outcome
from orchestrator.run_waiter import RunWaiter
from orchestrator.states import RunState


class StepClock:
    """Stamps of one run's steps: handler start and end, completion start and end."""

    def __init__(self) -> None:
        self.handler: dict[tuple[int, str], tuple[float, float]] = {}
        self.commits: list[tuple[float, float, list[tuple[int, str]]]] = []


def _breakdown(clock: StepClock, run_id: int, length: int) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {"handler": [], "flush_wait": [], "commit": [], "dispatch": []}
    commit_of = {
        key: (start, end) for start, end, keys in clock.commits for key in keys if key[0] == run_id
    }
    # The last step's completion may still be returning when the run is seen ended.
    for i in range(length - 1):
        key = (run_id, f"t{i:02d}")
        h_start, h_end = clock.handler[key]
        c_start, c_end = commit_of[key]
        phases["handler"].append(h_end - h_start)
        phases["flush_wait"].append(c_start - h_end)
        phases["commit"].append(c_end - c_start)
        phases["dispatch"].append(clock.handler[(run_id, f"t{i + 1:02d}")][0] - c_end)
    return phases


async def chain_steps(url: str, *, repeats: int = 7, length: int = 40) -> list[Figure]:
    stamps = StepClock()
    registry = builtin_registry()

    async def step(ctx: TaskContext) -> None:
        now = time.perf_counter()
        stamps.handler[(ctx.run_id, ctx.task_id)] = (now, time.perf_counter())

    registry.register("bench.step", step)
    spec = chain("chain_steps", length, handler="bench.step")
    per_run: list[dict[str, list[float]]] = []
    walls: list[float] = []
    async with (
        scratch_database(url) as (db_url, _db),
        Orchestrator(bench_settings(), db_url, registry=registry, workflows=[spec]) as orch,
    ):
        engine = orch.engine
        assert engine is not None and orch.db is not None
        complete = engine.complete

        async def timed_complete(outcomes: Sequence[Outcome], **kw: Any) -> Completion:
            started = time.perf_counter()
            result = await complete(outcomes, **kw)
            keys = [(o.run_id, o.task_id) for o in outcomes]
            stamps.commits.append((started, time.perf_counter(), keys))
            return result

        engine.complete = timed_complete  # type: ignore[method-assign]
        async with RunWaiter(orch.db, poll_s=0.05) as waiter:
            for i in range(repeats + 1):  # the first run warms caches
                started = time.perf_counter()
                run_id = await engine.trigger("chain_steps", actor="bench")
                states = await waiter.wait([run_id], timeout=60)
                wall = time.perf_counter() - started
                assert states[run_id] == RunState.SUCCESS, states
                if i:
                    walls.append(wall)
                    per_run.append(_breakdown(stamps, run_id, length))
    figures = [
        Figure(
            "chain40_steps",
            "wall_s",
            median(walls),
            "s",
            context={"runs": repeats, "tasks": length},
        )
    ]
    for phase in ("handler", "flush_wait", "commit", "dispatch"):
        values = [v for run in per_run for v in run[phase]]
        figures.append(
            Figure(
                "chain40_steps",
                f"{phase}_ms",
                median(values) * 1000,
                "ms",
                context={
                    "per_step_mean_ms": round(sum(values) / len(values) * 1000, 4),
                    "steps": len(values),
                },
            )
        )
    return figures


@scenario(
    "chain40_steps",
    "chain40 step by step: handler, flush wait, commit (record + claim successor), dispatch",
)
async def _chain_steps(url: str, _args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await chain_steps(url)

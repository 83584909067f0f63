"""The live UI under load: ``ui_live``.

A 200-task run (a gate, then 199 tasks that each fail nine times with no
retry delay before succeeding: thousands of transitions in seconds) runs
beside ``fanout``'s 1,000 three-task chains, in phases without watchers and
with 50 server-sent-event clients on the 200-task run (in a second process:
their reading is not the engine's): PAIRS pairs of a phase without and one
with, the pairs alternating which comes first. Figures: the watched run's
transitions/s, the p99 delay from a transition's row to its arrival at a
client, and the fanout rate with watchers against without: the median of
each pair's ratio (the two phases of a pair are seconds apart, so the
machine's drift and other load weigh on both alike; one disturbed phase
moves one ratio, not the figure). The context adds what moves less with the
machine's other load: per phase, the CPU seconds of this process, of the
database's server processes and of the watchers' process, and the live
hub's CPU per watched transition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from statistics import median
from typing import Any

from bench.cpu_use import cpu_s as process_cpu_s
from bench.engine_scenarios import bench_settings, chain
from bench.harness import Figure, scratch_database
from bench.registry import scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import RunWaiter
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from orchestrator.ui.live import HUB_KEY

ATTEMPTS = 10
CLIENTS = 50
#: Phases without and with watchers alternate; the machine's speed drifts between them.
PAIRS = 20


async def ui_live(url: str, *, runs: int = 1000, clients: int = CLIENTS) -> list[Figure]:
    gate = asyncio.Event()
    registry = builtin_registry()

    async def hold(_ctx: TaskContext) -> None:
        await gate.wait()

    async def churn(ctx: TaskContext) -> dict[str, int]:
        if ctx.attempt < ATTEMPTS:
            raise RuntimeError("again")
        return {"attempt": ctx.attempt}

    registry.register("bench.gate", hold)
    registry.register("bench.churn", churn)
    again = RetryPolicy(max_attempts=ATTEMPTS, initial_delay_s=0, max_delay_s=0, jitter=0)
    watched = WorkflowSpec(
        name="watched200",
        tasks=(
            TaskSpec(id="gate", handler="bench.gate"),
            *(
                TaskSpec(id=f"w{i:03d}", handler="bench.churn", upstream=("gate",), retry=again)
                for i in range(199)
            ),
        ),
    )
    fan = chain("fanout3", 3)
    phases: list[dict[str, Any]] = []
    async with (
        scratch_database(url) as (db_url, db),
        Orchestrator(
            bench_settings(http_port=0),
            db_url,
            registry=registry,
            workflows=[watched, fan],
            http=True,
        ) as orch,
    ):
        assert orch.engine is not None and orch.db is not None and orch.http is not None
        engine, port = orch.engine, orch.http.port
        hub = orch.http.app[HUB_KEY]
        async with RunWaiter(orch.db, poll_s=0.05) as waiter:
            await waiter.wait([await engine.trigger("fanout3", actor="bench")], timeout=60)
            for with_clients in phase_order(PAIRS):
                gate.clear()
                run_id = await engine.trigger("watched200", actor="bench")
                proc = None
                if with_clients:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.ui_watchers",
                        "--port",
                        str(port),
                        "--run",
                        str(run_id),
                        "--clients",
                        str(clients),
                        stdout=asyncio.subprocess.PIPE,
                    )
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), 60)
                    assert line.strip() == b"ready", line
                hub_cpu_at = hub.cpu_s
                pids = await backend_pids(db)
                pg_cpu_at = postgres_cpu_s(pids)
                cpu_at = time.process_time()
                started = time.perf_counter()
                gate.set()
                ids = await engine.create_runs(
                    [RunRequest("fanout3") for _ in range(runs)], actor="bench"
                )
                states = await waiter.wait(ids, timeout=600)
                fan_s = time.perf_counter() - started
                assert set(states.values()) == {RunState.SUCCESS}, set(states.values())
                [state] = (await waiter.wait([run_id], timeout=600)).values()
                watched_s = time.perf_counter() - started
                cpu_s = time.process_time() - cpu_at
                pg_cpu_s = postgres_cpu_s(pids) - pg_cpu_at
                hub_cpu_s = hub.cpu_s - hub_cpu_at
                assert state == RunState.SUCCESS, state
                async with db.pool.acquire() as conn:
                    steps = await conn.fetchval(
                        "SELECT count(*) FROM transitions WHERE run_id = $1", run_id
                    )
                phase: dict[str, Any] = {
                    "clients": clients if with_clients else 0,
                    "fanout_runs_per_s": runs / fan_s,
                    "watched_transitions": steps,
                    "watched_transitions_per_s": steps / watched_s,
                    "orchestrator_cpu_s": cpu_s,
                    "postgres_cpu_s": pg_cpu_s,
                    "hub_cpu_us_per_transition": 1e6 * hub_cpu_s / steps,
                }
                if proc is not None:
                    assert proc.stdout is not None
                    out, _ = await asyncio.wait_for(proc.communicate(), 120)
                    phase["delays"] = json.loads(out.decode().strip().splitlines()[-1])
                phases.append(phase)
    without = [p for p in phases if not p["clients"]]
    watching = [p for p in phases if p["clients"]]
    rate_without = median(p["fanout_runs_per_s"] for p in without)
    rate_with = median(p["fanout_runs_per_s"] for p in watching)
    ratios = [
        with_["fanout_runs_per_s"] / without_["fanout_runs_per_s"]
        for without_, with_ in (
            sorted(phases[i : i + 2], key=lambda p: p["clients"]) for i in range(0, len(phases), 2)
        )
    ]
    p99 = max(p["delays"]["p99_ms"] for p in watching)
    slowest_change = min(p["watched_transitions_per_s"] for p in watching)
    ctx: dict[str, Any] = {
        "phases": phases,
        "clients": clients,
        "fanout_runs": runs,
        # CPU moves far less than runs/s with what else the machine runs.
        "hub_cpu_us_per_transition": median(p["hub_cpu_us_per_transition"] for p in watching),
        "orchestrator_cpu_s_without": median(p["orchestrator_cpu_s"] for p in without),
        "orchestrator_cpu_s_with": median(p["orchestrator_cpu_s"] for p in watching),
        "postgres_cpu_s_without": median(p["postgres_cpu_s"] for p in without),
        "postgres_cpu_s_with": median(p["postgres_cpu_s"] for p in watching),
        "watchers_cpu_s": median(p["delays"]["cpu_s"] for p in watching),
    }
    return [
        Figure(
            "ui_live",
            "watched_transitions_per_s",
            slowest_change,
            "rows/s",
            ">= 500",
            context={"watched_tasks": 200, "attempts_per_task": ATTEMPTS},
        ),
        Figure("ui_live", "commit_to_client_p99_ms", p99, "ms", "<= 200", context=ctx),
        Figure(
            "ui_live",
            "fanout_with_vs_without_clients",
            100 * median(ratios),
            "%",
            ">= 95",
            context={
                "pair_ratios_pct": [round(100 * r, 1) for r in ratios],
                "with": rate_with,
                "without": rate_without,
                "orchestrator_cpu_s_with_minus_without": ctx["orchestrator_cpu_s_with"]
                - ctx["orchestrator_cpu_s_without"],
                "postgres_cpu_s_with_minus_without": ctx["postgres_cpu_s_with"]
                - ctx["postgres_cpu_s_without"],
                "watchers_cpu_s": ctx["watchers_cpu_s"],
                "hub_cpu_us_per_transition": ctx["hub_cpu_us_per_transition"],
            },
        ),
    ]


def phase_order(pairs: int) -> list[bool]:
    """Whether each phase has watchers: pairs alternate which comes first
    (without-with, then with-without), so a drift of the machine's speed
    over the run favours neither side."""
    order: list[bool] = []
    for k in range(pairs):
        order += [False, True] if k % 2 == 0 else [True, False]
    return order


async def backend_pids(db: Database) -> list[int]:
    """The server processes of the scratch database's sessions (the engine's
    pool, the hub's reads and this scenario's own)."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    return [row["pid"] for row in rows]


def postgres_cpu_s(pids: list[int]) -> float:
    """CPU seconds of these server processes (on this machine; 0 when elsewhere)."""
    return sum(process_cpu_s(pid) or 0.0 for pid in pids)


@scenario("ui_live", "50 SSE clients on a 200-task run changing fast, beside fanout")
async def _ui_live(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await ui_live(url, runs=args.runs)

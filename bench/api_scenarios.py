"""API scenario: reading a long history, and authenticated triggers over HTTP.

``list``: 1,000,000 ended runs of 20 workflows are written straight into the
runs table (generate_series: the history, not the engine, is the subject),
then ``GET /api/v1/runs?limit=100`` is timed with a viewer token, one request
at a time: the first page, a page deep in the history (a cursor), one
workflow's page and one state's page. ``trigger``: a second process sends
authenticated manual triggers over 64 keep-alive connections; each 201 is a
committed event and run (counted afterwards).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import aiohttp

from bench.harness import Figure, percentile, scratch_database
from bench.registry import option, scenario
from bench.webhook_load import TOKEN_ENV, run_generator
from handlers import builtin_registry
from orchestrator import tokens
from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec

option("--history", type=int, default=1_000_000, help="api: runs in history (default 1000000)")
option("--list-requests", type=int, default=300, help="api: timed list requests per kind")
option("--trigger-requests", type=int, default=20_000, help="api: measured triggers, at most")
option("--trigger-seconds", type=float, default=15.0, help="api: measured seconds, at most")

SPEC = WorkflowSpec(name="bench_api", tasks=(TaskSpec(id="t", handler="noop"),))
WORKFLOWS = 20

HISTORY_SQL = """
INSERT INTO runs (workflow, version, state, actor, created_at, started_at, ended_at)
SELECT 'history_' || (g % $2), $3,
       (CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'success' END)::run_state, 'bench',
       now() - make_interval(secs => $1 - g), now() - make_interval(secs => $1 - g),
       now() - make_interval(secs => $1 - g)
FROM generate_series(1, $1) AS g
"""


async def _timed(http: aiohttp.ClientSession, url: str, token: str, n: int) -> list[float]:
    times = []
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise AssertionError(f"{url}: {resp.status} {body[:300]!r}")
        times.append((time.perf_counter() - started) * 1000)
    return times


async def api(url: str, args: argparse.Namespace) -> list[Figure]:
    settings = Settings(http_port=0, worker_slots=0, api_auth="tokens", db_pool_size=8)
    async with (
        scratch_database(url) as (db_url, db),
        Orchestrator(
            settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
        ) as orch,
    ):
        assert orch.http is not None and orch.engine is not None
        async with db.pool.acquire() as conn:
            version = await conn.fetchval("SELECT version FROM workflow_versions LIMIT 1")
            started = time.perf_counter()
            await conn.execute(HISTORY_SQL, args.history, WORKFLOWS, version)
            await conn.execute("ANALYZE runs")
            filled_s = time.perf_counter() - started
            middle = await conn.fetchval(
                "SELECT id FROM runs ORDER BY id OFFSET $1 LIMIT 1", args.history // 2
            )
        viewer, _ = await tokens.create(db, "bench-viewer", tokens.Role.VIEWER, actor="bench")
        operator, _ = await tokens.create(db, "bench-operator", tokens.Role.OPERATOR, actor="bench")
        base = f"http://127.0.0.1:{orch.http.port}/api/v1/runs?limit=100"
        kinds = {
            "first page": base,
            "deep page": f"{base}&cursor={middle}",
            "one workflow": f"{base}&workflow=history_7",
            "failed only": f"{base}&state=failed",
        }
        latencies: dict[str, list[float]] = {}
        async with aiohttp.ClientSession() as http:
            await _timed(http, base, viewer, 20)  # warm the caches
            for kind, target in kinds.items():
                latencies[kind] = await _timed(http, target, viewer, args.list_requests)
        result = await _trigger_load(orch.http.port, operator, args)
        async with db.pool.acquire() as conn:
            started_runs = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE workflow = 'bench_api'"
            )
    accepted = result["accepted"] + result["warmup_accepted"]
    if started_runs != accepted:
        raise AssertionError(f"{accepted} triggers answered 201 but {started_runs} runs exist")
    every = [t for times in latencies.values() for t in times]
    ctx: dict[str, Any] = {
        "history_runs": args.history,
        "history_fill_s": round(filled_s, 1),
        **{
            f"{kind} p50/p99 ms": [
                round(percentile(times, 0.5), 2),
                round(percentile(times, 0.99), 2),
            ]
            for kind, times in latencies.items()
        },
    }
    trigger_ctx = {
        "connections": result["connections"],
        "statuses": result["statuses"],
        "client_errors": result["errors"],
        "seconds": result["elapsed_s"],
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
    }
    return [
        Figure("api", "list_100_p99_ms", percentile(every, 0.99), "ms", "<= 50", ctx),
        Figure("api", "triggers_per_s", result["req_per_s"], "runs/s", ">= 2000", trigger_ctx),
    ]


async def _trigger_load(port: int, token: str, args: argparse.Namespace) -> dict[str, Any]:
    return await run_generator(
        [
            "--port",
            str(port),
            "--api-workflow",
            SPEC.name,
            "--requests",
            str(args.trigger_requests),
            "--seconds",
            str(args.trigger_seconds),
        ],
        {TOKEN_ENV: token},
    )


@scenario(
    "api",
    "GET 100 runs of a 1,000,000-run history (p99), authenticated triggers over HTTP (runs/s)",
)
async def _api(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    return await api(url, args)

"""Alerting scenarios: webhook delivery latency under 10,000 failures, and
the cost of alert rules on the fanout hot path."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from bench.engine_scenarios import bench_settings, chain
from bench.harness import Figure, percentile, scratch_database
from bench.registry import option, scenario
from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.engine import RunRequest
from orchestrator.run_waiter import RunWaiter
from orchestrator.signatures import generate_secret, standard_keys, verify_standard
from orchestrator.spec import WorkflowSpec

option("--failures", type=int, default=10_000, help="alerts: task failures (default 10000)")


async def _fail(ctx: TaskContext) -> None:
    ctx.log.info("about to fail")
    raise RuntimeError(f"bench failure in run {ctx.run_id}")


def _failing_spec(route: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": "failing",
            "tasks": [
                {
                    "id": "t",
                    "handler": "bench.fail",
                    "retry": {"max_attempts": 1, "dead_letter": True},
                }
            ],
            "alerts": [{"on": ["task_dead_lettered"], "routes": [route]}],
        }
    )


async def delivery(url: str, *, failures: int) -> list[Figure]:
    """``failures`` runs whose one task dead-letters, each alert POSTed (signed)
    to a local receiver: seconds from the transition's transaction to the
    receiver having verified it."""
    secret = generate_secret()
    os.environ["ORCHESTRATOR_SECRET_BENCH_ALERTS"] = secret
    keys = standard_keys(secret)
    lags: list[float] = []
    seen: set[str] = set()
    duplicates = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal duplicates
        body = await request.read()
        arrived = datetime.now(UTC)
        problem = verify_standard(
            keys,
            msg_id=request.headers.get("webhook-id"),
            timestamp=request.headers.get("webhook-timestamp"),
            signature=request.headers.get("webhook-signature"),
            body=body,
            now=arrived.timestamp(),
        )
        if problem is not None:
            return web.Response(status=401, text=problem)
        msg_id = request.headers["webhook-id"]
        if msg_id in seen:
            duplicates += 1
        seen.add(msg_id)
        raised = datetime.fromisoformat(orjson.loads(body)["raised_at"])
        lags.append((arrived - raised).total_seconds())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    route = {
        "type": "webhook",
        "url": f"http://{host}:{port}/alerts",
        "secret": "{{ secrets.BENCH_ALERTS }}",
    }
    registry = builtin_registry()
    registry.register("bench.fail", _fail)
    try:
        async with (
            scratch_database(url) as (db_url, _db),
            Orchestrator(
                bench_settings(poll_interval_s=0.2),
                db_url,
                registry=registry,
                workflows=[_failing_spec(route)],
            ) as orch,
        ):
            assert orch.engine is not None and orch.db is not None
            started = time.perf_counter()
            ids: list[int] = []
            for start in range(0, failures, 1000):
                batch = [RunRequest("failing") for _ in range(min(1000, failures - start))]
                ids += await orch.engine.create_runs(batch, actor="bench")
            async with RunWaiter(orch.db, poll_s=0.05) as waiter:
                await waiter.wait(ids, timeout=600)
            deadline = time.perf_counter() + 120
            while len(seen) < failures and time.perf_counter() < deadline:
                await _pause(0.05)
            elapsed = time.perf_counter() - started
    finally:
        await runner.cleanup()
    ctx = {
        "failures": failures,
        "delivered": len(seen),
        "duplicates": duplicates,
        "seconds": round(elapsed, 2),
        "median_s": round(statistics.median(lags), 4) if lags else None,
        "max_s": round(max(lags), 4) if lags else None,
    }
    return [
        Figure("alerts", "delivered_p99_s", percentile(lags, 0.99), "s", "<= 1", context=ctx),
        Figure("alerts", "delivered", len(seen), "alerts", f"== {failures}", context=ctx),
    ]


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def _fanout_once(url: str, runs: int, alerting: bool) -> float:
    """Runs/s of ``runs`` 3-task chains; with ``alerting``, rules on the
    workflow and project-wide (none fires on success) and the relay running."""
    spec = chain("fanout3", 3)
    overrides: dict[str, Any] = {"alert_relay": alerting}
    if alerting:
        rule = {"on": ["run_failed", "task_dead_lettered"], "routes": [{"type": "log"}]}
        spec = WorkflowSpec.model_validate({**spec.model_dump(mode="json"), "alerts": [rule]})
        overrides["alert_rules"] = [rule]
    async with (
        scratch_database(url) as (db_url, _db),
        Orchestrator(
            bench_settings(**overrides), db_url, registry=builtin_registry(), workflows=[spec]
        ) as orch,
    ):
        assert orch.engine is not None and orch.db is not None
        async with RunWaiter(orch.db, poll_s=0.05) as waiter:
            await waiter.wait([await orch.engine.trigger("fanout3", actor="bench")], timeout=60)
            started = time.perf_counter()
            ids = await orch.engine.create_runs(
                [RunRequest("fanout3") for _ in range(runs)], actor="bench"
            )
            await waiter.wait(ids, timeout=600)
            return runs / (time.perf_counter() - started)


async def fanout_cost(url: str, *, runs: int, rounds: int = 3) -> list[Figure]:
    """fanout without and with alerting, alternated ``rounds`` times (medians)."""
    off: list[float] = []
    on: list[float] = []
    for _ in range(rounds):
        off.append(await _fanout_once(url, runs, alerting=False))
        on.append(await _fanout_once(url, runs, alerting=True))
    ratio = statistics.median(on) / statistics.median(off)
    ctx = {
        "runs": runs,
        "without_runs_per_s": [round(v, 1) for v in off],
        "with_runs_per_s": [round(v, 1) for v in on],
    }
    return [Figure("alerts", "fanout_ratio_with_alerting", ratio, "x", ">= 0.95", context=ctx)]


@scenario(
    "alerts",
    "10,000 task failures with a signed webhook route: transition -> delivered p99; "
    "fanout with alerting on vs off",
)
async def _alerts(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    figures = await delivery(url, failures=args.failures)
    figures += await fanout_cost(url, runs=args.runs)
    return figures

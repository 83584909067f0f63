"""/metrics: counted in memory, database gauges at scrape time, parsed with
prometheus-client's own parser and checked against the database."""

from __future__ import annotations

import logging
import re
import uuid

import aiohttp
import pytest
from eventually import eventually
from prometheus_client.parser import text_string_to_metric_families

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec

ONCE = RetryPolicy(max_attempts=1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def test_a_known_workload_is_counted(db_url: str) -> None:
    name = f"m_{uuid.uuid4().hex[:6]}"
    good = WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="a", handler="noop"), TaskSpec(id="b", handler="noop", upstream=("a",))),
    )
    bad = WorkflowSpec(name=f"{name}_bad", tasks=(TaskSpec(id="x", handler="fail", retry=ONCE),))
    settings = Settings(worker_slots=4, http_port=0)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[good, bad], http=True
    ) as orch:
        assert orch.engine is not None and orch.db is not None and orch.http is not None
        url = f"http://127.0.0.1:{orch.http.port}/metrics"
        before = await scrape(url)
        runs = [await orch.engine.trigger(name) for _ in range(2)]
        runs.append(await orch.engine.trigger(f"{name}_bad"))
        api = f"http://127.0.0.1:{orch.http.port}/api/v1/workflows/{name}/runs"
        async with aiohttp.ClientSession() as http, http.post(api, json={}) as resp:
            assert resp.status == 201
            runs += (await resp.json())["run_ids"]
        await wait_for_runs(orch.db, runs, timeout=30)
        after: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        def delta(metric: str, **labels: str) -> float:
            key = (metric, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        async def all_attempts_counted() -> bool:
            # A worker counts its attempts once their commit returns, which
            # may be just after the runs' ends were seen.
            nonlocal after
            after = await scrape(url)
            return delta("orchestrator_task_attempts_ended_total", state="success") >= 6

        await eventually(all_attempts_counted, timeout=10, what="every attempt counted")

    assert delta("orchestrator_runs_started_total", workflow=name) == 3
    assert delta("orchestrator_runs_ended_total", workflow=name, state="success") == 3
    assert delta("orchestrator_runs_ended_total", workflow=f"{name}_bad", state="failed") == 1
    assert delta("orchestrator_task_attempts_ended_total", state="success") >= 6
    assert delta("orchestrator_task_attempts_ended_total", state="failed") >= 1
    assert delta("orchestrator_task_duration_seconds_count") >= 7
    assert delta("orchestrator_task_queue_wait_seconds_count") >= 7
    assert after[("orchestrator_db_pool_waiters", ())] == 0
    assert delta("orchestrator_intake_events_total", source="manual", outcome="recorded") == 1
    assert delta("orchestrator_http_responses_total", route="api", code="201") == 1
    assert delta("orchestrator_http_responses_total", route="other", code="200") >= 1
    assert after[("orchestrator_tasks_queued", ())] >= 0
    assert ("orchestrator_db_pool_connections", ()) in after
    assert ("orchestrator_event_loop_lag_seconds", ()) in after


async def test_a_replica_without_the_api_serves_metrics_on_its_own_port(db_url: str) -> None:
    settings = Settings(worker_slots=1, roles="worker", metrics_port=0)
    async with Orchestrator(settings, db_url, registry=builtin_registry()) as orch:
        assert orch.http is None and orch.metrics_http is not None
        base = f"http://127.0.0.1:{orch.metrics_http.port}"
        found = await scrape(base + "/metrics")
        assert ("orchestrator_tasks_deferred", ()) in found
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path


async def test_a_wedged_claim_loop_turns_healthz_unhealthy(db_url: str) -> None:
    import asyncio

    from orchestrator.engine import Claimed

    wedge = asyncio.Event()
    wedged = asyncio.Event()
    release = asyncio.Event()

    async def fault(point: str, _c: Claimed | None) -> None:
        if point == "claim_loop" and wedge.is_set():
            wedged.set()
            await release.wait()  # the loop never comes round again

    settings = Settings(
        worker_slots=1, roles="worker", metrics_port=0, health_stale_s=0.5, poll_interval_s=0.05
    )
    async with Orchestrator(settings, db_url, registry=builtin_registry(), fault=fault) as orch:
        assert orch.metrics_http is not None
        url = f"http://127.0.0.1:{orch.metrics_http.port}/healthz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 200
            wedge.set()
            await asyncio.wait_for(wedged.wait(), 10)

            async def unhealthy() -> dict[str, object] | None:
                async with http.get(url) as resp:
                    return await resp.json() if resp.status == 503 else None

            from eventually import eventually

            body = await eventually(unhealthy, timeout=10, what="/healthz to see the stuck loop")
            assert body is not None and body["stuck"] == ["worker claim loop"]
            release.set()
            wedge.clear()

            async def healthy() -> bool:
                async with http.get(url) as resp:
                    return resp.status == 200

            await eventually(healthy, timeout=10, what="/healthz to recover")


async def test_readyz_names_missing_migrations(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0)
    async with Orchestrator(settings, db_url, registry=builtin_registry(), http=True) as orch:
        assert orch.http is not None and orch.db is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 200
            async with orch.db.pool.acquire() as conn:
                await conn.execute(
                    "DELETE FROM schema_migrations WHERE version = "
                    "(SELECT max(version) FROM schema_migrations)"
                )
            async with http.get(base + "/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503 and "orchestrator migrate" in body["detail"]


async def test_each_answer_is_access_logged_without_tokens(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(worker_slots=0, http_port=0, access_log=True)
    async with Orchestrator(settings, db_url, registry=builtin_registry(), http=True) as orch:
        assert orch.http is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        with caplog.at_level(logging.INFO, logger="orchestrator.access"):
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/api/v1/runs?limit=1") as resp:
                    assert resp.status == 200
                async with http.post(base + "/api/v1/callbacks/tok-s3cret", json={}) as resp:
                    assert resp.status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "orchestrator.access"]
    assert any(re.fullmatch(r"GET /api/v1/runs 200 [0-9.]+ms", line) for line in lines), lines
    assert any(line.startswith("POST /api/v1/callbacks/*** 404") for line in lines), lines
    assert not any("tok-s3cret" in line for line in lines)

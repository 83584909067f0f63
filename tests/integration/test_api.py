"""The HTTP API over real HTTP: manual triggers are events with an actor."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.waiting import wait_for_runs

SPEC = WorkflowSpec(
    name="greeting",
    tasks=(TaskSpec(id="say", handler="echo", inputs={"to": "{{ params.name }}"}),),
)


async def test_manual_trigger_over_http_is_an_event_with_its_caller(db_url: str) -> None:
    settings = Settings(worker_slots=2, http_port=0, poll_interval_s=0.2)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None and orch.db is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        async with aiohttp.ClientSession() as http:

            async def post(path: str, **kw: Any) -> tuple[int, Any]:
                async with http.post(base + path, **kw) as resp:
                    return resp.status, await resp.json()

            status, body = await post(
                "/api/v1/workflows/greeting/runs",
                json={"params": {"name": "Ada"}},
                headers={"Idempotency-Key": "k-1", "X-Actor": "ops@example"},
            )
            assert status == 201 and len(body["run_ids"]) == 1
            run_id = body["run_ids"][0]
            again = await post(
                "/api/v1/workflows/greeting/runs",
                json={"params": {"name": "Ada"}},
                headers={"Idempotency-Key": "k-1"},
            )
            assert again == (200, body)  # same answer, nothing new started

            assert (await post("/api/v1/workflows/nope/runs", json={}))[0] == 404
            bad_status, bad = await post(
                "/api/v1/workflows/greeting/runs",
                data=b"{oops",
                headers={"Content-Type": "application/json"},
            )
            assert bad_status == 400 and "not valid JSON" in bad["error"]
            assert (await post("/api/v1/workflows/greeting/runs", json={"params": [1]}))[0] == 400

            assert (await wait_for_runs(orch.db, [run_id], timeout=20))[run_id] == RunState.SUCCESS
            async with http.get(f"{base}/api/v1/runs/{run_id}") as resp:
                run = await resp.json()
            assert run["state"] == "success" and run["actor"] == "ops@example"
            assert run["tasks"][0]["output"] == {"to": "Ada"}
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200

        async with orch.db.pool.acquire() as conn:
            event = await conn.fetchrow("SELECT source, actor, run_ids FROM events")
            runs = await conn.fetchval("SELECT count(*) FROM runs")
        assert (event["source"], event["actor"], list(event["run_ids"])) == (
            "manual",
            "ops@example",
            [run_id],
        )
        assert runs == 1


TYPED = WorkflowSpec(
    name="daily_sales",
    params={
        "date": {"type": "string", "format": "date", "required": True},
        "region": {"enum": ["emea", "amer"], "default": "emea"},
    },
    tasks=(TaskSpec(id="load", handler="echo", inputs={"date": "{{ params.date }}"}),),
)


async def test_trigger_body_and_params_are_checked_and_named(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0, poll_interval_s=0.2)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[TYPED], http=True
    ) as orch:
        assert orch.http is not None and orch.db is not None
        url = f"http://127.0.0.1:{orch.http.port}/api/v1/workflows/daily_sales/runs"
        async with aiohttp.ClientSession() as http:

            async def post(body: Any, url: str = url, **kw: Any) -> tuple[int, Any]:
                async with http.post(url, json=body, **kw) as resp:
                    return resp.status, await resp.json()

            # Params at the top level are not silently ignored.
            status, flat = await post({"date": "2026-02-01"})
            assert status == 400 and flat["unexpected_keys"] == ["date"]
            assert "'date'" in flat["error"] and 'go under "params"' in flat["error"]
            status, extra = await post({"params": {"date": "2026-02-01"}, "priority": 3})
            assert status == 400 and extra["unexpected_keys"] == ["priority"]
            assert "allowed keys: params, idempotency_key" in extra["error"]

            # Params the workflow does not declare, or of the wrong type.
            status, typo = await post({"params": {"dat": "2026-02-01"}})
            assert status == 400
            assert {"param": "dat", "error": "is not a declared param (did you mean 'date'?)"} in (
                typo["params"]
            )
            assert typo["declared"] == ["date", "region"]
            status, wrong = await post({"params": {"date": "2026-02-01", "region": "mars"}})
            assert status == 400 and [p["param"] for p in wrong["params"]] == ["region"]
            assert 'should be one of "emea", "amer"' in wrong["error"]

            # The documented body: params, and an idempotency key in the body.
            body = {"params": {"date": "2026-02-01"}, "idempotency_key": "day-2026-02-01"}
            status, created = await post(body)
            assert status == 201 and len(created["run_ids"]) == 1
            assert await post(body) == (200, created)
            status, _ = await post(body, headers={"Idempotency-Key": "something-else"})
            assert status == 400

            status, unknown = await post({}, url.replace("daily_sales", "daily_sale"))
            assert status == 404 and "did you mean 'daily_sales'?" in unknown["error"]

        async with orch.db.pool.acquire() as conn:
            params = await conn.fetchval("SELECT params::text FROM runs")
            assert await conn.fetchval("SELECT count(*) FROM runs") == 1
        assert orjson.loads(params) == {"date": "2026-02-01", "region": "emea"}

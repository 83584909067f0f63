"""The HTTP API over real HTTP: manual triggers are events with an actor; only
JSON starts runs; cross-origin access only for configured origins; every error
is a problem document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.errors import ConfigError
from orchestrator.intake import Router
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings, load_settings
from orchestrator.sources import SourceContext
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.views import show_run

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
            # The actor is decided by the server, whatever X-Actor claims.
            assert run["state"] == "success" and run["actor"] == "api:127.0.0.1"
            assert run["tasks"][0]["output"] == {"to": "Ada"}
            assert run["event_id"] == body["event_id"]  # the event that started it
            async with http.get(f"{base}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200

        async with orch.db.pool.acquire() as conn:
            event = await conn.fetchrow("SELECT source, actor, run_ids FROM events")
            runs = await conn.fetchval("SELECT count(*) FROM runs")
        assert (event["source"], event["actor"], list(event["run_ids"])) == (
            "manual",
            "api:127.0.0.1",
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


@asynccontextmanager
async def api(db_url: str, **overrides: Any) -> AsyncIterator[tuple[Orchestrator, str]]:
    settings = Settings(**{"worker_slots": 0, "http_port": 0, **overrides})
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[SPEC], http=True
    ) as orch:
        assert orch.http is not None
        yield orch, f"http://127.0.0.1:{orch.http.port}"


async def count_events(orch: Orchestrator) -> int:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM events")
        return n


RUNS = "/api/v1/workflows/greeting/runs"


async def test_only_bodies_labelled_json_start_a_run(db_url: str) -> None:
    # What a web page can send cross-origin without a preflight: no type, text/plain, a form.
    refused = [
        (b'{"params": {"name": "Eve"}}', {"Content-Type": "text/plain"}),
        (b'{"params": {"name": "Eve"}}', {"Content-Type": "text/plain; charset=utf-8"}),
        (b"params=1", {"Content-Type": "application/x-www-form-urlencoded"}),
        (b"", {}),
        (b'{"params": {}}', {"Content-Type": "application/json; charset=latin-1"}),
    ]
    accepted = [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json; charset=UTF-8"},
        {"Content-Type": "application/merge-patch+json"},
    ]
    async with api(db_url) as (orch, base), aiohttp.ClientSession() as http:
        for body, headers in refused:
            # skip_auto_headers: aiohttp would label a bytes body application/octet-stream.
            async with http.post(
                base + RUNS, data=body, headers=headers, skip_auto_headers=["Content-Type"]
            ) as resp:
                answer = await resp.json()
            assert resp.status == 415, (headers, answer)
            assert resp.content_type == "application/problem+json"
            assert "application/json" in answer["detail"], answer
            assert answer["errors"][0]["name"] == "Content-Type"
        assert await count_events(orch) == 0
        for headers in accepted:
            async with http.post(base + RUNS, data=b'{"params": {}}', headers=headers) as resp:
                assert resp.status == 201, (headers, await resp.text())
        assert await count_events(orch) == len(accepted)


async def test_cross_origin_preflights_are_refused_unless_the_origin_is_configured(
    db_url: str,
) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with api(db_url) as (orch, base), aiohttp.ClientSession() as http:
        async with http.options(base + RUNS, headers=preflight) as resp:
            answer = await resp.json()
        assert resp.status == 403 and "https://evil.example" in answer["detail"]
        assert "Access-Control-Allow-Origin" not in resp.headers
        # A simple request (no preflight) is refused by the JSON rule, and its
        # answer carries no header letting the page read it.
        async with http.post(
            base + RUNS, data=b"{}", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 415 and "Access-Control-Allow-Origin" not in resp.headers
        async with http.get(
            base + "/api/v1/runs", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        assert await count_events(orch) == 0


async def test_configured_origins_and_only_they_get_cors_headers(db_url: str) -> None:
    ui = "https://ui.example.com"
    async with (
        api(db_url, cors_origins=f"{ui}, http://localhost:3000") as (_, base),
        aiohttp.ClientSession() as http,
    ):
        async with http.options(
            base + RUNS,
            headers={
                "Origin": ui,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,idempotency-key",
            },
        ) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == ui
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            allowed_headers = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "content-type" in allowed_headers and "idempotency-key" in allowed_headers
            assert "Origin" in resp.headers["Vary"]
        async with http.post(base + RUNS, json={"params": {}}, headers={"Origin": ui}) as resp:
            assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == ui
        async with http.get(base + "/api/v1/runs/0", headers={"Origin": ui}) as resp:
            assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == ui
        other = {
            "Origin": "https://ui.example.com.evil.example",
            "Access-Control-Request-Method": "POST",
        }
        async with http.options(base + RUNS, headers=other) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers


def test_cors_origins_must_be_origins() -> None:
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_CORS_ORIGINS.*not an origin"):
        load_settings(cors_origins="https://ui.example.com/app")
    assert load_settings(cors_origins=" https://a.example ,http://b:3000").cors_origin_list == [
        "https://a.example",
        "http://b:3000",
    ]
    assert load_settings().cors_origin_list == []


class Boom:
    """A source whose route fails the way a bug would."""

    name = "boom"

    def setup(self, ctx: SourceContext) -> None:
        assert ctx.http is not None
        ctx.http.router.add_get("/api/v1/boom", self.fail)

    async def fail(self, request: web.Request) -> web.Response:
        raise RuntimeError("password=hunter2 at /srv/secret/module.py")

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def use_router(self, router: Router) -> None: ...

    async def not_ready(self) -> str | None:
        return None


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(worker_slots=0, http_port=0)
    async with (
        Orchestrator(settings, db_url, workflows=[SPEC], sources=[Boom()], http=True) as orch,
        aiohttp.ClientSession() as http,
    ):
        assert orch.http is not None
        async with http.get(f"http://127.0.0.1:{orch.http.port}/api/v1/boom") as resp:
            text = await resp.text()
            answer = orjson.loads(text)
        assert resp.status == 500 and resp.content_type == "application/problem+json"
        assert "hunter2" not in text and "Traceback" not in text and "secret" not in text
        reference = re.search(r"reference ([0-9a-f]{12})", answer["detail"])
        assert reference, answer
        # The server log has the traceback, under the reference the client was given.
        [logged] = [r for r in caplog.records if reference.group(1) in r.getMessage()]
        assert logged.exc_info is not None and "hunter2" in str(logged.exc_info[1])


APPROVAL = WorkflowSpec(
    name="approval",
    tasks=(
        TaskSpec(
            id="await_approval",
            handler="sensor.callback",
            inputs={"timeout_s": 3600, "on_timeout": "skipped"},
        ),
    ),
)


async def test_a_run_read_over_the_api_has_its_waits_but_not_the_callback_token(
    db_url: str,
) -> None:
    settings = Settings(worker_slots=2, http_port=0, poll_interval_s=0.2)
    async with (
        Orchestrator(
            settings, db_url, registry=builtin_registry(), workflows=[APPROVAL], http=True
        ) as orch,
        aiohttp.ClientSession() as http,
    ):
        assert orch.http is not None and orch.db is not None and orch.engine is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        run_id = await orch.engine.trigger("approval", {})

        async def described() -> Any:
            async with http.get(f"{base}/api/v1/runs/{run_id}") as resp:
                assert resp.status == 200
                text = await resp.text()
            run = orjson.loads(text)
            return (run, text) if run["waits"] else None

        run, text = await eventually(described, what="the approval wait in the API's run")
        [wait] = run["waits"]
        assert wait["task_id"] == "await_approval" and wait["kind"] == "callback"
        assert wait["state"] == "waiting" and wait["on_timeout"] == "skipped"
        assert wait["description"] == "a callback" and wait["timeout_at"]
        assert "callback_url" not in wait
        assert [t["state"] for t in run["tasks"]] == ["deferred"]
        # `show` (an operator) has the URL; the API answer has nothing of it.
        shown = await show_run(orch.db, run_id)
        found = re.search(r"a callback: POST /api/v1/callbacks/([A-Za-z0-9_-]{40,})", shown)
        assert found, shown
        assert found.group(1) not in text and "/api/v1/callbacks/" not in text

        async with http.get(f"{base}/api/v1/runs") as resp:
            [listed] = (await resp.json())["items"]
        assert listed["id"] == run_id and listed["waiting"] == 1

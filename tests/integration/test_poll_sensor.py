"""sensor.poll: the triggerer checks a condition; no worker slot is held."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState


class Endpoint:
    """A real HTTP endpoint that answers 503 until it is told it is ready."""

    def __init__(self) -> None:
        self.ready = False
        self.hits = 0

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        if not self.ready:
            return web.json_response({"status": "pending"}, status=503)
        return web.json_response({"status": "done", "rows": 42})


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    state = Endpoint()
    app = web.Application()
    app.router.add_get("/export", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield state, f"http://127.0.0.1:{port}/export"
    await runner.cleanup()


def waiting_on(url: str, **extra: object) -> WorkflowSpec:
    return WorkflowSpec(
        name="export_ready",
        tasks=(
            TaskSpec(
                id="ready",
                handler="sensor.poll",
                inputs={
                    "check": "http.request",
                    "inputs": {"url": url, "timeout_s": 2},
                    "interval_s": 0.05,
                    "jitter": 0.2,
                    **extra,
                },
            ),
            TaskSpec(
                id="load",
                handler="echo",
                upstream=("ready",),
                inputs={"rows": "{{ upstream.ready.result.json.rows }}"},
            ),
        ),
    )


async def test_a_poll_wait_ends_when_the_condition_holds(
    db_url: str, endpoint: tuple[Endpoint, str]
) -> None:
    state, url = endpoint
    settings = Settings(worker_slots=1, poll_interval_s=0.2)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[waiting_on(url)]
    ) as o:
        assert o.engine is not None and o.db is not None
        run = await o.engine.trigger("export_ready")
        await eventually(lambda: _hits_at_least(state, 3), what="several checks")
        async with o.db.pool.acquire() as conn:
            # Checked by the triggerer: the only worker slot is free.
            assert (
                await conn.fetchval("SELECT count(*) FROM task_instances WHERE state = 'running'")
                == 0
            )
        state.ready = True
        assert (await wait_for_runs(o.db, [run], timeout=20))[run] == RunState.SUCCESS
        async with o.db.pool.acquire() as conn:
            out = await conn.fetchval(
                "SELECT output::text FROM task_instances WHERE run_id=$1 AND task_id='load'", run
            )
            checks = await conn.fetchval("SELECT (config->>'checks')::int FROM deferrals")
        assert orjson.loads(out) == {"rows": 42}
        assert checks >= 3


async def test_a_poll_wait_times_out_as_told(db_url: str, endpoint: tuple[Endpoint, str]) -> None:
    _state, url = endpoint
    spec = waiting_on(url, timeout_s=0.5, on_timeout="skipped")
    async with Orchestrator(
        Settings(worker_slots=1, poll_interval_s=0.2),
        db_url,
        registry=builtin_registry(),
        workflows=[spec],
    ) as o:
        assert o.engine is not None and o.db is not None
        run = await o.engine.trigger("export_ready")
        assert (await wait_for_runs(o.db, [run], timeout=20))[run] == RunState.SUCCESS
        async with o.db.pool.acquire() as conn:
            states = dict(
                await conn.fetch(
                    "SELECT task_id, state::text FROM task_instances WHERE run_id=$1", run
                )
            )
        assert states == {"ready": "skipped", "load": "skipped"}


async def _hits_at_least(state: Endpoint, n: int) -> bool:
    return state.hits >= n

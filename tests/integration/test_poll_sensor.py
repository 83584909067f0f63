"""sensor.poll: the triggerer checks a condition; no worker slot is held."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import orjson
import pytest
from aiohttp import web
from eventually import eventually
from local_http import local_server

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database


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
    async with local_server(app) as base:
        yield state, f"{base}/export"


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


async def _deferral(db: Database) -> tuple[int, datetime] | None:
    """The poll wait's checks so far and when it is due next (None before it is recorded)."""
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT coalesce((config->>'checks')::int, 0) AS checks, wake_at FROM deferrals"
        )
    return None if row is None else (row["checks"], row["wake_at"])


async def test_a_poll_wait_ends_when_the_condition_holds(
    db_url: str, endpoint: tuple[Endpoint, str]
) -> None:
    """Checks a minute apart on the manual clock: the test moves time past
    each next check instead of waiting for it."""
    state, url = endpoint
    clock = ManualClock(SYSTEM_CLOCK.now())
    settings = Settings(worker_slots=1, poll_interval_s=0.2)
    spec = waiting_on(url, interval_s=60)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[spec], clock=clock
    ) as o:
        assert o.engine is not None and o.db is not None
        db = o.db
        run = await o.engine.trigger("export_ready")
        for checks in (1, 2, 3):

            async def checked(n: int = checks) -> bool:
                found = await _deferral(db)
                return found is not None and found[0] >= n and found[1] > clock.now()

            await eventually(checked, what=f"check {checks} to find nothing and re-arm")
            assert state.hits == checks  # nothing is checked before its time
            async with db.pool.acquire() as conn:
                # Checked by the triggerer: the only worker slot is free.
                running = "SELECT count(*) FROM task_instances WHERE state = 'running'"
                assert await conn.fetchval(running) == 0
            if checks == 3:
                state.ready = True
            await clock.advance(timedelta(seconds=80))  # past the next check (60 s ± 20% jitter)
        assert (await wait_for_runs(db, [run], timeout=20))[run] == RunState.SUCCESS
        async with db.pool.acquire() as conn:
            out = await conn.fetchval(
                "SELECT output::text FROM task_instances WHERE run_id=$1 AND task_id='load'", run
            )
        assert orjson.loads(out) == {"rows": 42}
        assert state.hits == 4


async def test_a_poll_wait_times_out_as_told(db_url: str, endpoint: tuple[Endpoint, str]) -> None:
    _state, url = endpoint
    clock = ManualClock(SYSTEM_CLOCK.now())
    spec = waiting_on(url, interval_s=60, timeout_s=600, on_timeout="skipped")
    async with Orchestrator(
        Settings(worker_slots=1, poll_interval_s=0.2),
        db_url,
        registry=builtin_registry(),
        workflows=[spec],
        clock=clock,
    ) as o:
        assert o.engine is not None and o.db is not None
        db = o.db
        run = await o.engine.trigger("export_ready")

        async def waiting() -> bool:
            return await _deferral(db) is not None

        await eventually(waiting, what="the poll wait to be recorded")
        await clock.advance(timedelta(seconds=601))
        assert (await wait_for_runs(db, [run], timeout=20))[run] == RunState.SUCCESS
        async with db.pool.acquire() as conn:
            states = dict(
                await conn.fetch(
                    "SELECT task_id, state::text FROM task_instances WHERE run_id=$1", run
                )
            )
        assert states == {"ready": "skipped", "load": "skipped"}

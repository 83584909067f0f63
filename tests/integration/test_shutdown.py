"""Stopping an orchestrator while an attempt runs: what stop() commits, and
what it says about it."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.intake import Router
from orchestrator.settings import Settings
from orchestrator.sources import Source, SourceContext
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import database_name, drop_database

SLOW = WorkflowSpec(
    name="slow", tasks=(TaskSpec(id="nap", handler="sleep", inputs={"seconds": 600}),)
)


class StopsWithStrayCancellation:
    """A source whose stop() raises a CancelledError that is not the caller's:
    what aiokafka's consumer does when its broker is already gone (it awaits
    a fetch task of its own that it has just cancelled)."""

    name = "stray-cancel"

    def setup(self, ctx: SourceContext) -> None:
        pass

    def use_router(self, router: Router) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        inner = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        inner.cancel()
        await inner

    async def not_ready(self) -> str | None:
        return None


async def nap_state(orch: Orchestrator, run_id: int) -> str:
    assert orch.db is not None
    state: str = await orch.db.pool.fetchval(
        "SELECT state FROM task_instances WHERE run_id = $1 AND task_id = 'nap'", run_id
    )
    return state


async def with_a_running_attempt(db_url: str, *sources: Source) -> tuple[Orchestrator, int]:
    """A started orchestrator whose worker runs a 600 s attempt."""
    orch = Orchestrator(
        Settings(worker_slots=2, poll_interval_s=0.2, lease_s=30),
        db_url,
        registry=builtin_registry(),
        workflows=[SLOW],
        sources=sources,
    )
    await orch.start()
    assert orch.engine is not None
    run_id = await orch.engine.trigger("slow", actor="test")

    async def running() -> bool:
        return await nap_state(orch, run_id) == "running"

    await eventually(running, what="the attempt running")
    return orch, run_id


async def final_state(db_url: str, run_id: int) -> tuple[str, str]:
    """The task's state and the reason of its last transition, read afresh."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT t.state, (SELECT reason FROM transitions x WHERE x.run_id = t.run_id "
            "AND x.task_id = t.task_id ORDER BY x.id DESC LIMIT 1) AS reason "
            "FROM task_instances t WHERE t.run_id = $1 AND t.task_id = 'nap'",
            run_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return row["state"], row["reason"]


async def test_an_attempt_interrupted_by_stop_is_committed_before_stop_returns(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.worker")
    orch, run_id = await with_a_running_attempt(db_url)
    await orch.stop(grace_s=0)
    assert await final_state(db_url, run_id) == (
        "up_for_retry",
        "worker shut down during the attempt",
    )
    assert f"run {run_id} task nap attempt 1 interrupted" in caplog.text
    assert "now up_for_retry" in caplog.text


async def test_a_source_that_stops_badly_does_not_keep_attempts_from_being_recorded(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    orch, run_id = await with_a_running_attempt(db_url, StopsWithStrayCancellation())
    await orch.stop(grace_s=0)  # no CancelledError escapes
    assert (await final_state(db_url, run_id))[0] == "up_for_retry"
    assert "source stray-cancel did not stop cleanly" in caplog.text


async def test_when_the_database_is_gone_the_log_claims_no_new_state(
    db_url: str, pg_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.worker")
    orch, run_id = await with_a_running_attempt(db_url)
    await drop_database(pg_admin_url, database_name(db_url))
    await orch.stop(grace_s=0)
    assert f"not recorded: run {run_id} task nap attempt 1 (would be up_for_retry)" in caplog.text
    assert "now up_for_retry" not in caplog.text
    assert "failed (up_for_retry)" not in caplog.text

"""A completion locks its runs and records its attempts in one round trip
(lock_and_record_attempts), yet decides on the task states as they are once
it holds the locks: two branches of a diamond that end at once, each in its
own commit, queue the join exactly once, whichever commit goes first."""

from __future__ import annotations

import asyncio

import pytest
from attempts import success
from eventually import eventually

from orchestrator.engine import Claimed, Engine
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database

pytestmark = pytest.mark.timeout(60)

DIAMOND = WorkflowSpec(
    name="diamond",
    tasks=(
        TaskSpec(id="a", handler="noop"),
        TaskSpec(id="b", handler="noop", upstream=("a",)),
        TaskSpec(id="c", handler="noop", upstream=("a",)),
        TaskSpec(id="d", handler="noop", upstream=("b", "c")),
    ),
)


async def claim(engine: Engine, want: set[str]) -> dict[str, Claimed]:
    claimed, _ = await engine.claim("w1", 10)
    assert {c.task_id for c in claimed} == want
    return {c.task_id: c for c in claimed}


async def waiting_for_locks(db: Database) -> int:
    async with db.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    return count


async def join_state(db: Database, run_id: int) -> str:
    async with db.pool.acquire() as conn:
        state: str = await conn.fetchval(
            "SELECT state::text FROM task_instances WHERE run_id = $1 AND task_id = 'd'", run_id
        )
    return state


async def test_branches_ending_while_their_run_is_locked_queue_the_join_once(
    db: Database, engine: Engine
) -> None:
    await engine.register([DIAMOND])
    run_id = await engine.trigger("diamond", actor="test")
    a = await claim(engine, {"a"})
    await engine.complete([success(a["a"])], actor="w1")
    branches = await claim(engine, {"b", "c"})

    # Someone else holds the run's row: both completions start, and both
    # wait for its lock inside their first statement.
    async with db.pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run_id)
        ending = [
            asyncio.create_task(engine.complete([success(branches[t])], actor="w1"))
            for t in ("b", "c")
        ]
        await eventually(lambda: _both_wait(db), what="both completions waiting for the run's lock")
    done = await asyncio.gather(*ending)

    assert [len(d.accepted) for d in done] == [1, 1]
    # The second to get the lock saw the first's success: the join is queued.
    assert await join_state(db, run_id) == "queued"
    d = await claim(engine, {"d"})
    await engine.complete([success(d["d"])], actor="w1")
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT state::text FROM runs WHERE id = $1", run_id) == (
            "success"
        )
        queued = await conn.fetchval(
            "SELECT count(*) FROM transitions"
            " WHERE run_id = $1 AND task_id = 'd' AND to_state = 'queued'",
            run_id,
        )
    assert queued == 1


async def _both_wait(db: Database) -> bool:
    return await waiting_for_locks(db) >= 2

"""Retention deletes old history in batches and never what a live run needs."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.api import manual_event
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.engine import Engine
from orchestrator.intake import DeadLetter, Intake, Router
from orchestrator.retention import count_prunable, prune
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database

SPEC = WorkflowSpec(name="kept", tasks=(TaskSpec(id="t", handler="noop"),))


async def scalar(db: Database, sql: str, *args: object) -> int:
    async with db.pool.acquire() as conn:
        value: int = await conn.fetchval(sql, *args)
        return value


TASKS_OF = "SELECT count(*) FROM task_instances WHERE run_id = ANY($1)"
TRANSITIONS_OF = "SELECT count(*) FROM transitions WHERE run_id = ANY($1)"


async def test_prune_keeps_live_runs_and_the_events_they_need(engine: Engine, db: Database) -> None:
    await engine.register([SPEC])
    intake = Intake(engine, Router([SPEC]))
    answers = await intake.ingest(
        [manual_event("kept", {"i": i}, actor="test") for i in range(7)],
        dead_letters=[DeadLetter("kafka", "t", "kafka:t:0:1", "not JSON")],
    )
    run_ids = [a.run_ids[0] for a in answers]
    ended, live = run_ids[:5], run_ids[5:]
    long_ago = SYSTEM_CLOCK.now() - timedelta(days=40)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE runs SET state = 'success', ended_at = $2 WHERE id = ANY($1)", ended, long_ago
        )
        await conn.execute("UPDATE events SET received_at = $1", long_ago)
        await conn.execute("UPDATE dead_letter_events SET received_at = $1", long_ago)

    cutoff = SYSTEM_CLOCK.now() - timedelta(days=30)
    planned = await count_prunable(db, cutoff)
    assert (planned.runs, planned.events, planned.dead_letters) == (5, 5, 1)

    done = await prune(db, cutoff, batch=2)  # several batches
    assert (done.runs, done.events, done.dead_letters) == (5, 5, 1)
    assert await scalar(db, "SELECT count(*) FROM runs") == 2
    assert await scalar(db, "SELECT count(*) FROM events") == 2
    assert await scalar(db, "SELECT count(*) FROM dead_letter_events") == 0
    assert await scalar(db, TASKS_OF, ended) == 0
    assert await scalar(db, TRANSITIONS_OF, ended) == 0
    # The live runs keep their tasks, history and events.
    assert await scalar(db, TASKS_OF, live) == 2
    assert await scalar(db, TRANSITIONS_OF, live) > 0
    again = await prune(db, cutoff)
    assert (again.runs, again.events, again.dead_letters) == (0, 0, 0)


async def test_prune_keeps_events_a_waiting_sensor_may_still_need(
    engine: Engine, db: Database
) -> None:
    from orchestrator.intake import Event

    await engine.register([SPEC])
    intake = Intake(engine, Router([SPEC]))
    [live] = await intake.ingest([manual_event("kept", {}, actor="test")])
    long_ago = SYSTEM_CLOCK.now() - timedelta(days=40)
    await intake.ingest(
        [Event(source="file", channel="in/a.csv", dedup_key="file:a", meta={"path": "in/a.csv"})]
    )
    async with db.pool.acquire() as conn:
        # The live run began long ago; the file (with a correlation key) came after it.
        await conn.execute("UPDATE runs SET created_at = $1", long_ago - timedelta(days=1))
        await conn.execute("UPDATE events SET received_at = $1", long_ago)
    cutoff = SYSTEM_CLOCK.now() - timedelta(days=30)
    assert (await prune(db, cutoff)).events == 0
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE runs SET state = 'success', ended_at = $1", long_ago)
    done = await prune(db, cutoff)
    assert (done.runs, done.events) == (1, 2)
    assert live.run_ids

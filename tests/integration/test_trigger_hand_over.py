"""A trigger hands the roots it queues to the worker of its own process in
the statement that creates the run (insert_runs), when nothing else was
claimable: the run starts as the commit returns, one round trip sooner.
When other work waits, or a root is limited, the claim statement takes over,
so priority, age and limits are honoured exactly as before."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestrator.engine import Claimed, Engine
from orchestrator.operations import pause_task
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import SQL, Database, connect

pytestmark = pytest.mark.timeout(30)


def single(name: str, **task: Any) -> WorkflowSpec:
    return WorkflowSpec(name=name, tasks=(TaskSpec(id="only", handler="noop", **task),))


@dataclass
class RecordingWorker:
    """The engine's local worker, as far as a commit sees it: slots to
    reserve, and what each commit handed over."""

    slots: int
    owner: str = "here"
    handed: list[tuple[list[Claimed], int, bool | None]] = field(default_factory=list)

    def reserve(self) -> int:
        return self.slots

    def hand_over(
        self, claimed: list[Claimed], reserved: int, limited_waiting: bool | None
    ) -> None:
        self.handed.append((claimed, reserved, limited_waiting))


@pytest.fixture
async def statements(db: Database) -> AsyncIterator[list[str]]:
    """Every statement the pool of ``db`` runs from now on: the fixture's
    pool is swapped for one of a single connection, with a query logger."""
    one = await connect(db.url, size=1)
    seen: list[str] = []
    async with one.pool.acquire() as conn:
        conn.add_query_logger(lambda q: seen.append(q.query))
    pool, db.pool = db.pool, one.pool
    yield seen
    db.pool = pool
    await one.close()


async def steps_of(db: Database, run_id: int) -> list[tuple[str | None, str, int, str, str]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.transitions_of_run, run_id)
    return [
        (r["from_state"], r["to_state"], r["attempt"], r["actor"], r["reason"])
        for r in rows
        if r["task_id"] == "only"
    ]


async def test_a_trigger_hands_its_root_to_the_local_worker_in_the_creating_statement(
    db: Database, engine: Engine, statements: list[str]
) -> None:
    await engine.register([single("solo")])
    worker = RecordingWorker(slots=4)
    engine.local = worker
    run_id = await engine.trigger("solo", actor="test", params={"day": 3})

    [(claimed, reserved, limited)] = worker.handed
    assert [(c.run_id, c.task_id, c.attempt) for c in claimed] == [(run_id, "only", 1)]
    assert claimed[0].params == {"day": 3} and claimed[0].workflow == "solo"
    assert (reserved, limited) == (4, False)
    assert SQL.insert_runs in statements and SQL.claim not in statements
    assert await steps_of(db, run_id) == [
        (None, "queued", 0, "test", "created"),
        ("queued", "running", 1, "here", "claimed"),
    ]
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state::text, lease_owner, lease_until > now() AS leased"
            " FROM task_instances WHERE run_id = $1",
            run_id,
        )
    assert dict(row) == {"state": "running", "lease_owner": "here", "leased": True}


async def test_older_waiting_work_goes_first_through_the_claim_statement(
    db: Database, engine: Engine, statements: list[str]
) -> None:
    await engine.register([single("solo")])
    older = await engine.trigger("solo", actor="test")  # no local worker: left queued
    worker = RecordingWorker(slots=1)
    engine.local = worker
    newer = await engine.trigger("solo", actor="test")

    [(claimed, _, limited)] = worker.handed
    assert [c.run_id for c in claimed] == [older]
    assert limited is False
    assert SQL.claim in statements
    assert await steps_of(db, newer) == [(None, "queued", 0, "test", "created")]


async def test_a_limited_root_is_left_to_the_claim_statement(db: Database, engine: Engine) -> None:
    await engine.register([single("pooled", pool="warehouse")])
    worker = RecordingWorker(slots=4)
    engine.local = worker
    run_id = await engine.trigger("pooled", actor="test")

    [(claimed, _, limited)] = worker.handed
    assert claimed == [] and limited is True
    assert await steps_of(db, run_id) == [(None, "queued", 0, "test", "created")]


async def test_a_root_an_operator_holds_is_not_handed_over(db: Database, engine: Engine) -> None:
    await engine.register([single("solo")])
    await pause_task(engine, "solo", "only", actor="test", reason="maintenance")
    worker = RecordingWorker(slots=4)
    engine.local = worker
    run_id = await engine.trigger("solo", actor="test")

    assert [claimed for claimed, _, _ in worker.handed] == [[]]
    assert await steps_of(db, run_id) == [(None, "held", 0, "test", "created")]

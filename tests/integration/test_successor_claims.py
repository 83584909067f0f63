"""A completion that queues successors claims them for its worker in the
same statement (apply_decisions): the next step of a chain runs
without a notification or another round trip, in priority order with the
work that was already waiting, and never past limited work."""

from __future__ import annotations

from typing import Any

import pytest
from attempts import success

from orchestrator.engine import Claimed, Engine
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import SQL, Database

pytestmark = pytest.mark.timeout(30)

CHAIN = WorkflowSpec(
    name="pair",
    tasks=(
        TaskSpec(id="a", handler="noop"),
        TaskSpec(id="b", handler="noop", upstream=("a",)),
    ),
)


def single(name: str, **task: Any) -> WorkflowSpec:
    return WorkflowSpec(name=name, tasks=(TaskSpec(id="only", handler="noop", **task),))


async def claim_a(engine: Engine) -> Claimed:
    run_id = await engine.trigger("pair", actor="test")
    claimed, _ = await engine.claim("w1", 1)
    assert [(c.run_id, c.task_id) for c in claimed] == [(run_id, "a")]
    return claimed[0]


async def task_row(db: Database, run_id: int, task_id: str) -> tuple[str, int, str | None]:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state::text, attempt, lease_owner FROM task_instances"
            " WHERE run_id = $1 AND task_id = $2",
            run_id,
            task_id,
        )
    assert row is not None
    return row["state"], row["attempt"], row["lease_owner"]


async def test_the_commit_that_completes_a_step_claims_its_successor(
    db: Database, engine: Engine
) -> None:
    await engine.register([CHAIN])
    a = await claim_a(engine)
    done = await engine.complete(
        [success(a, output='{"rows": 3}')], actor="w1", claim_for="w1", claim_limit=4
    )
    assert [(c.run_id, c.task_id, c.attempt) for c in done.claimed] == [(a.run_id, "b", 1)]
    assert done.claimed[0].upstream == {"a": {"rows": 3}}
    assert done.limited_waiting is False
    assert await task_row(db, a.run_id, "b") == ("running", 1, "w1")
    async with db.pool.acquire() as conn:
        steps = [
            r for r in await conn.fetch(SQL.transitions_of_run, a.run_id) if r["task_id"] == "b"
        ]
    # Decided, then claimed: both edges are logged, in order, with their actors.
    assert [(s["from_state"], s["to_state"], s["attempt"], s["actor"]) for s in steps] == [
        (None, "scheduled", 0, "test"),
        ("scheduled", "queued", 0, "w1"),
        ("queued", "running", 1, "w1"),
    ]
    # And the claimed successor completes like any claimed task: the run ends.
    last = await engine.complete(
        [success(done.claimed[0])], actor="w1", claim_for="w1", claim_limit=4
    )
    assert last.claimed == [] and list(last.finished_runs) == [a.run_id]


async def test_without_room_to_claim_the_successor_is_queued_for_anyone(
    db: Database, engine: Engine
) -> None:
    await engine.register([CHAIN])
    a = await claim_a(engine)
    done = await engine.complete([success(a)], actor="w1")
    assert done.claimed == []
    assert await task_row(db, a.run_id, "b") == ("queued", 0, None)


async def test_work_of_higher_priority_goes_before_the_successor(
    db: Database, engine: Engine
) -> None:
    await engine.register([CHAIN, single("urgent", priority=5)])
    a = await claim_a(engine)
    urgent = await engine.trigger("urgent", actor="test")
    done = await engine.complete([success(a)], actor="w1", claim_for="w1", claim_limit=1)
    assert [(c.run_id, c.task_id) for c in done.claimed] == [(urgent, "only")]
    assert await task_row(db, a.run_id, "b") == ("queued", 0, None)


async def test_with_room_for_both_the_successor_and_waiting_work_are_claimed(
    engine: Engine,
) -> None:
    await engine.register([CHAIN, single("urgent", priority=5)])
    a = await claim_a(engine)
    urgent = await engine.trigger("urgent", actor="test")
    done = await engine.complete([success(a)], actor="w1", claim_for="w1", claim_limit=5)
    # Both in the one commit (returned in id order).
    assert [(c.run_id, c.task_id) for c in done.claimed] == [(a.run_id, "b"), (urgent, "only")]


async def test_at_equal_priority_the_successor_goes_before_older_work(
    db: Database, engine: Engine
) -> None:
    await engine.register([CHAIN, single("older")])
    a = await claim_a(engine)
    older = await engine.trigger("older", actor="test")
    done = await engine.complete([success(a)], actor="w1", claim_for="w1", claim_limit=1)
    assert [(c.run_id, c.task_id) for c in done.claimed] == [(a.run_id, "b")]
    assert await task_row(db, older, "only") == ("queued", 0, None)


async def test_while_limited_work_waits_nothing_is_claimed_past_it(
    db: Database, engine: Engine
) -> None:
    await engine.register([CHAIN, single("pooled", pool="warehouse")])
    a = await claim_a(engine)
    pooled = await engine.trigger("pooled", actor="test")
    done = await engine.complete([success(a)], actor="w1", claim_for="w1", claim_limit=4)
    # The claim loop orders limited and unlimited work by priority (claim_mixed).
    assert done.claimed == [] and done.limited_waiting is True
    assert await task_row(db, a.run_id, "b") == ("queued", 0, None)
    assert await task_row(db, pooled, "only") == ("queued", 0, None)

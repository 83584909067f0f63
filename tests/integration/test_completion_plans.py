"""A completion finds the rows it touches by their keys, however many other
runs and tasks the tables hold: its cost follows its own batch, not the
backlog. In a burst the planner's statistics are stale (here the tables are
new and never analysed, as in a busy day's first minutes), and plans built on
them once scanned task_instances (and, for each task state read, every live
run) on every commit.

The plans are read as the server makes them, through auto_explain, which the
fixture loads into the one session the engine uses."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from attempts import success

from orchestrator.engine import Engine, RunRequest
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database

pytestmark = [
    pytest.mark.timeout(60),
    # The listener stays on the pooled session on purpose: it is the point.
    pytest.mark.filterwarnings("ignore:.*released to the pool but has 1 active log listener"),
]

CHAIN = WorkflowSpec(
    name="chain3",
    tasks=(
        TaskSpec(id="a", handler="noop"),
        TaskSpec(id="b", handler="noop", upstream=("a",)),
        TaskSpec(id="c", handler="noop", upstream=("b",)),
    ),
)
BACKLOG = 1500
BATCH = 200


@pytest.fixture
async def plans(db: Database) -> AsyncIterator[list[str]]:
    """The plan of every statement (those inside functions too) that the
    pool of ``db`` runs from now on: the pool is swapped for one session
    with auto_explain sending each plan back as a notice."""
    seen: list[str] = []

    def keep(_conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
        seen.append(str(message.message))

    async def listen(conn: asyncpg.Connection) -> None:
        conn.add_log_listener(keep)  # a released session forgets its listeners

    one = await asyncpg.create_pool(
        db.url,
        min_size=1,
        max_size=1,
        setup=listen,
        server_settings={
            "session_preload_libraries": "auto_explain",
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_nested_statements": "on",
            "auto_explain.log_level": "notice",
        },
    )
    assert one is not None
    pool, db.pool = db.pool, one
    yield seen
    db.pool = pool
    await one.close()


async def test_a_completion_reads_no_table_whole_however_large_the_backlog(
    db: Database, engine: Engine, plans: list[str]
) -> None:
    await engine.register([CHAIN])
    await engine.create_runs([RunRequest("chain3") for _ in range(BACKLOG)], actor="test")
    claimed, _ = await engine.claim("w1", BATCH)
    assert len(claimed) == BATCH
    plans.clear()

    done = await engine.complete(
        [success(c, "w1") for c in claimed], actor="w1", claim_for="w1", claim_limit=BATCH
    )

    assert len(done.accepted) == BATCH and not done.rejected
    # The batch's successors come first: each run's next step, for the same worker.
    assert sorted((c.run_id, c.task_id) for c in done.claimed) == sorted(
        (c.run_id, "b") for c in claimed
    )
    scans = [
        plan
        for plan in plans
        if re.search(r"Seq Scan on (task_instances|runs)\b", plan)
        # Reading a whole table is what the bench's own count does, not a completion.
        and "count(*)" not in plan
    ]
    assert len(plans) >= 2, plans  # the plans were seen at all
    assert scans == [], "\n\n".join(scans)

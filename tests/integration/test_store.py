"""Store-level guarantees against a real PostgreSQL: migrations, the guarded
completion of attempts, the named queries, the enums and leases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import asyncpg
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.engine import Claimed, Engine, Outcome
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import RunState, TaskState
from orchestrator.store import SQL, Database, create_database, drop_database
from orchestrator.store.migrate import available, migrate, pending
from orchestrator.store.queries import named_queries, queries

pytestmark = pytest.mark.timeout(30)

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.05, jitter=0)


@pytest.fixture
async def empty_db_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database with nothing in it, not even schema_migrations."""
    name = f"orch_empty_{uuid.uuid4().hex[:12]}"
    yield await create_database(pg_admin_url, name)
    await drop_database(pg_admin_url, name)


async def fetchval(db: Database, sql: str, *args: Any) -> Any:
    async with db.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def task_transitions(db: Database, run_id: int, task_id: str) -> list[asyncpg.Record]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.transitions_of_run, run_id)
    return [r for r in rows if r["task_id"] == task_id]


# -- migrations ----------------------------------------------------------------------


async def test_migrate_twice_applies_nothing_the_second_time(db: Database) -> None:
    # The fixture's database is a copy of a migrated template.
    assert await db.migrate() == []
    async with db.pool.acquire() as conn:
        assert await pending(conn) == []
        rows = await conn.fetch("SELECT package, version FROM schema_migrations")
    assert sorted((r["package"], r["version"]) for r in rows) == sorted(
        (m.package, m.version) for m in available()
    )


async def test_two_concurrent_migrations_apply_each_migration_once(empty_db_url: str) -> None:
    conns = [await asyncpg.connect(empty_db_url) for _ in range(2)]
    try:
        assert await pending(conns[0]) == [m.label for m in available()]
        async with asyncio.timeout(20):
            results = await asyncio.gather(migrate(conns[0]), migrate(conns[1]))
        everything = [m.label for m in available()]
        # One of them applied everything, the other waited on the lock and found nothing to do.
        assert sorted(results, key=len) == [[], everything]
        rows = await conns[0].fetch(
            "SELECT package, version, count(*) AS n FROM schema_migrations"
            " GROUP BY package, version ORDER BY 1, 2"
        )
        assert [(r["package"], r["version"], r["n"]) for r in rows] == sorted(
            (m.package, m.version, 1) for m in available()
        )
        assert await pending(conns[0]) == []
        assert await pending(conns[1]) == []
        assert await migrate(conns[1]) == []
    finally:
        for conn in conns:
            await conn.close()


async def test_a_database_migrated_before_sources_had_their_own_migrations_applies_none_again(
    empty_db_url: str,
) -> None:
    """Landing, schedules and Kafka logs were the core's 0003, 0004 and 0007:
    a database that applied them then records them under the package that
    holds them now, and nothing runs twice."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        # The single-package era ended at 0007; later migrations come after.
        by_version = sorted((m for m in available() if m.version <= 7), key=lambda m: m.version)
        assert [m.version for m in by_version] == list(range(1, 8))
        await conn.execute(
            """CREATE TABLE schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        for m in by_version:  # as the single-package migrator applied them
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
        later = [m.label for m in available() if m.version > 7]
        assert await pending(conn) == later
        assert await migrate(conn) == later
        rows = await conn.fetch("SELECT package, version, name FROM schema_migrations")
        assert sorted((r["package"], r["version"], r["name"]) for r in rows) == sorted(
            (m.package, m.version, m.name) for m in available()
        )
        assert {(r["package"], r["name"]) for r in rows if r["version"] in (3, 4, 7)} == {
            ("sources", "landing"),
            ("sources", "schedules"),
            ("sources", "kafka_logs"),
        }
        assert await pending(conn) == []
        assert await migrate(conn) == []
    finally:
        await conn.close()


# -- schema ------------------------------------------------------------------------------


async def test_every_named_query_prepares_against_the_migrated_schema(db: Database) -> None:
    named = {**queries(), **named_queries("sources")}
    assert len(named) > 20
    failures: dict[str, str] = {}
    async with db.pool.acquire() as conn:
        for name, sql in sorted(named.items()):
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
            finally:
                await tx.rollback()
    assert failures == {}


async def test_state_enums_match_the_database(db: Database) -> None:
    async with db.pool.acquire() as conn:
        tasks = await conn.fetchval("SELECT enum_range(NULL::task_state)::text[]")
        runs = await conn.fetchval("SELECT enum_range(NULL::run_state)::text[]")
    # Same labels in the same order (the order is what ORDER BY state would use).
    assert tasks == [s.value for s in TaskState]
    assert runs == [s.value for s in RunState]


# -- the guard on finished attempts ----------------------------------------------------


SPEC = WorkflowSpec(
    name="guarded",
    tasks=(
        TaskSpec(id="a", handler="noop", retry=RetryPolicy(max_attempts=3, initial_delay_s=0)),
        TaskSpec(id="b", handler="noop", upstream=("a",)),
    ),
)


async def _claim_some(engine: Engine, owner: str) -> list[Claimed]:
    claimed, _ = await engine.claim(owner, 5)
    return claimed


async def claim_a(engine: Engine, owner: str = "w1") -> Claimed:
    await engine.register([SPEC])
    await engine.trigger("guarded", actor="test")
    claimed, _ = await engine.claim(owner, 5)
    assert [(c.task_id, c.attempt) for c in claimed] == [("a", 1)]
    return claimed[0]


def outcome(c: Claimed, **kw: Any) -> Outcome:
    base: dict[str, Any] = {
        "id": c.id,
        "run_id": c.run_id,
        "task_id": c.task_id,
        "attempt": c.attempt,
        "owner": "w1",
        "target": TaskState.SUCCESS,
        "output": '{"ok": true}',
    }
    return Outcome(**{**base, **kw})


async def snapshot(db: Database, c: Claimed) -> tuple[Any, ...]:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state::text, attempt, lease_owner, lease_until, not_before, ended_at,"
            " output::text, error FROM task_instances WHERE id = $1",
            c.id,
        )
        n = await conn.fetchval("SELECT count(*) FROM transitions")
        b = await conn.fetchval(
            "SELECT state::text FROM task_instances WHERE run_id = $1 AND task_id = 'b'", c.run_id
        )
    assert row is not None
    return (*row.values(), n, b)


WRONG: dict[str, dict[str, Any]] = {
    "another owner": {"owner": "someone-else"},
    "a later attempt": {"attempt": 2},
    "an earlier attempt": {"attempt": 0},
    "another owner, failing it": {
        "owner": "someone-else",
        "target": TaskState.FAILED,
        "output": None,
        "error": "x",
    },
    # The reaper's variant: applies only when the lease has really run out.
    "an unexpired lease": {"target": TaskState.UP_FOR_RETRY, "delay_s": 0.0, "expired_only": True},
}


async def test_an_outcome_not_matching_the_lease_is_rejected(db: Database, engine: Engine) -> None:
    c = await claim_a(engine)
    before = await snapshot(db, c)
    assert before[:3] == ("running", 1, "w1")
    for what, wrong in WRONG.items():
        bad = outcome(c, **wrong)
        result = await engine.complete([bad], actor="test")
        assert (result.accepted, result.rejected, result.finished_runs) == ([], [bad], {}), what
        assert await snapshot(db, c) == before, what
    # The outcome that matches the lease is still accepted afterwards.
    result = await engine.complete([outcome(c)], actor="test")
    assert [o.attempt for o in result.accepted] == [1]
    assert (await snapshot(db, c))[0] == "success"


async def test_a_double_completion_is_accepted_once(db: Database, engine: Engine) -> None:
    c = await claim_a(engine)
    first = await engine.complete([outcome(c)], actor="test")
    assert len(first.accepted) == 1 and first.rejected == []
    after_first = await snapshot(db, c)
    assert after_first[0] == "success" and after_first[-1] == "queued"
    again = outcome(c)
    second = await engine.complete([again], actor="test")
    assert second.accepted == [] and second.rejected == [again]
    assert await snapshot(db, c) == after_first
    steps = await task_transitions(db, c.run_id, "a")
    assert [(s["from_state"], s["to_state"]) for s in steps].count(("running", "success")) == 1


async def test_racing_completions_of_one_attempt_are_accepted_once(
    db: Database, engine: Engine
) -> None:
    c = await claim_a(engine)
    ok = outcome(c)
    failed = outcome(c, target=TaskState.FAILED, output=None, error="boom")
    results = await asyncio.gather(
        engine.complete([ok], actor="one"), engine.complete([failed], actor="two")
    )
    accepted = [o for r in results for o in r.accepted]
    rejected = [o for r in results for o in r.rejected]
    assert len(accepted) == 1 and len(rejected) == 1
    state = (await snapshot(db, c))[0]
    assert state == accepted[0].target.value
    steps = await task_transitions(db, c.run_id, "a")
    assert [s["from_state"] for s in steps].count("running") == 1


async def test_a_stale_attempt_in_the_same_batch_as_the_current_one_is_rejected(
    db: Database, engine: Engine
) -> None:
    # Attempt 1 loses its lease and is retried by the same worker as attempt 2;
    # attempt 1's handler then returns late, and both results share one flush.
    c1 = await claim_a(engine)
    async with db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE task_instances SET lease_until = now() - interval '1 s' WHERE id = $1", c1.id
        )
    assert await engine.expire_leases(actor="reaper") == 1
    c2 = (await eventually(lambda: _claim_some(engine, "w1"), what="attempt 2 claimed"))[0]
    assert (c2.id, c2.attempt) == (c1.id, 2)
    current = outcome(c2)
    stale = outcome(c1, target=TaskState.FAILED, output=None, error="late")
    result = await engine.complete([current, stale], actor="w1")
    async with db.pool.acquire() as conn:
        states = {
            r["task_id"]: r["state"] for r in await conn.fetch(SQL.task_instances_of_run, c1.run_id)
        }
    assert states == {"a": "success", "b": "queued"}
    assert result.accepted == [current]
    assert result.rejected == [stale]
    assert result.finished_runs == {}


# -- leases ------------------------------------------------------------------------------


settings = partial(suite_settings, poll_interval_s=0.1)


async def test_heartbeats_keep_a_long_attempt_leased(db_url: str) -> None:
    """Leases run on the orchestrator's clock: the test moves time 2.5 s past
    a 1 s lease in heartbeat-sized steps, and the attempt is never taken back."""
    reg = builtin_registry()
    started = asyncio.Event()
    clock = ManualClock(SYSTEM_CLOCK.now())

    async def slow(ctx: Any) -> dict[str, int]:
        started.set()
        await ctx.clock.sleep(2.5)
        return {"attempt": ctx.attempt}

    reg.register("slow", slow)
    spec = WorkflowSpec(name="long", tasks=(TaskSpec(id="t", handler="slow", retry=FAST_RETRY),))
    cfg = settings(lease_s=1.0, heartbeat_s=0.3)
    async with Orchestrator(cfg, db_url, registry=reg, workflows=[spec], clock=clock) as o:
        assert o.engine is not None and o.db is not None
        db = o.db
        run_id = await o.engine.trigger("long")
        async with asyncio.timeout(10):
            await started.wait()
        lease = timedelta(seconds=cfg.lease_s)

        async def lease_until() -> datetime | None:
            value: datetime | None = await fetchval(
                db, "SELECT lease_until FROM task_instances WHERE run_id = $1", run_id
            )
            return value

        assert await lease_until() == clock.now() + lease  # claimed on the manual clock
        for _step in range(9):  # 2.7 s of manual time in 0.3 s steps
            await clock.advance(0.3)

            async def renewed() -> bool:
                until = await lease_until()  # None once the handler has returned
                return until is None or until >= clock.now() + lease

            await eventually(renewed, timeout=10, what="a heartbeat to push the lease forward")
        states = await wait_for_runs(o.db, [run_id], timeout=15)
        assert states[run_id] == RunState.SUCCESS
        steps = await task_transitions(o.db, run_id, "t")
        assert [(s["from_state"], s["to_state"], s["attempt"]) for s in steps] == [
            (None, "queued", 0),
            ("queued", "running", 1),
            ("running", "success", 1),
        ]
        assert all(s["reason"] != "lease expired" for s in steps)
        assert o.worker is not None and o.worker.rejected == 0


async def test_an_expired_lease_is_taken_back_and_retried(db_url: str, db: Database) -> None:
    reg = builtin_registry()
    frozen = asyncio.Event()
    thaw = asyncio.Event()

    async def freeze_first_attempt(point: str, c: Claimed) -> None:
        # Stands for a worker that stopped making progress: attempt 1 never ends
        # on its own. Heartbeat and reaper are set far apart so neither interferes.
        if point == "before_handler" and c.attempt == 1:
            frozen.set()
            await thaw.wait()

    spec = WorkflowSpec(name="lost", tasks=(TaskSpec(id="t", handler="noop", retry=FAST_RETRY),))
    cfg = settings(lease_s=30.0, heartbeat_s=60.0, reaper_interval_s=60.0)
    async with Orchestrator(
        cfg,
        db_url,
        registry=reg,
        workflows=[spec],
        worker_name="w-frozen",
        fault=freeze_first_attempt,
    ) as o:
        assert o.engine is not None and o.db is not None and o.worker is not None
        run_id = await o.engine.trigger("lost")
        try:
            async with asyncio.timeout(10):
                await frozen.wait()
            reaper = Engine(db, lease_s=30.0)
            # A lease that has not run out is left alone.
            assert await reaper.expire_leases(actor="reaper:test") == 0
            async with db.pool.acquire() as conn:
                moved = await conn.execute(
                    "UPDATE task_instances SET lease_until = now() - interval '1 s'"
                    " WHERE run_id = $1 AND state = 'running' AND lease_owner = 'w-frozen'",
                    run_id,
                )
            assert moved == "UPDATE 1"
            assert await reaper.expire_leases(actor="reaper:test") == 1
            states = await wait_for_runs(o.db, [run_id], timeout=10)
            assert states[run_id] == RunState.SUCCESS
        finally:
            thaw.set()
        # The frozen attempt's late result is refused and changes nothing.
        await eventually(lambda: _rejected(o), timeout=5, what="the late result to be refused")
        steps = await task_transitions(o.db, run_id, "t")
        assert [(s["from_state"], s["to_state"], s["attempt"], s["reason"]) for s in steps] == [
            (None, "queued", 0, "created"),
            ("queued", "running", 1, "claimed"),
            ("running", "up_for_retry", 1, "lease expired"),
            ("up_for_retry", "running", 2, "claimed"),
            ("running", "success", 2, "handler returned"),
        ]
        assert steps[2]["actor"] == "reaper:test"
        row = (await o.db.pool.fetch(SQL.task_instances_of_run, run_id))[0]
        assert (row["state"], row["attempt"], row["error"]) == ("success", 2, None)


async def _rejected(o: Orchestrator) -> bool:
    assert o.worker is not None
    return o.worker.rejected == 1

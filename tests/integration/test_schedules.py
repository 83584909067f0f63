"""Cron schedules and backfill against a real PostgreSQL, with a manual clock.

Time only moves when a test advances the ``ManualClock``; each scheduler
ticks once per advance, and tests wait on the tick counter (never a sleep).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import asyncpg
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import ManualClock
from orchestrator.intake import Intake
from orchestrator.loader import load_path
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL, Database, create_database, drop_database
from sources.backfill import BackfillError, backfill
from sources.models import ScheduleTrigger
from sources.queries import SQL as TRIGGERS_SQL
from sources.schedule import LEADER_LOCK, ScheduleSource

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def hourly(catchup: Literal["all", "latest", "none"] = "latest", **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name="hourly",
        tasks=(
            TaskSpec(
                id="report",
                handler="echo",
                inputs={
                    "logical": "{{ run.logical_date }}",
                    "end": "{{ run.interval_end }}",
                    "day": "{{ params.day }}",
                },
            ),
        ),
        triggers=(
            ScheduleTrigger(
                cron="0 * * * *",
                timezone="Europe/Paris",
                catchup=catchup,
                params={"day": "{{ meta.date }}", "at": "{{ meta.logical_date }}"},
                **kw,
            ),
        ),
    )


def daily(name: str = "daily", **kw: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="t", handler="echo", inputs={"d": "{{ params.day }}"}),),
        triggers=(
            ScheduleTrigger(
                cron="0 2 * * *",
                timezone="Europe/Paris",
                params={"day": "{{ meta.date }}"},
                **kw,
            ),
        ),
    )


settings = partial(suite_settings, schedule_tick_s=60)


async def ticked(*sources: ScheduleSource, after: Sequence[int]) -> None:
    async def probe() -> bool:
        return all(s.ticks > n for s, n in zip(sources, after, strict=True))

    await eventually(probe, what="a scheduler tick")


async def advance(clock: ManualClock, by: timedelta, *sources: ScheduleSource) -> None:
    """Move time on and wait until every scheduler has ticked at the new time."""
    before = [s.ticks for s in sources]
    await clock.advance(by)
    await ticked(*sources, after=before)


@contextlib.asynccontextmanager
async def scheduler(
    db_url: str, clock: ManualClock, spec: WorkflowSpec, *, workers: int = 0
) -> AsyncIterator[tuple[Orchestrator, ScheduleSource]]:
    source = ScheduleSource()
    async with Orchestrator(
        settings(worker_slots=workers),
        db_url,
        registry=builtin_registry(),
        workflows=[spec],
        sources=[source],
        clock=clock,
    ) as orch:
        await ticked(source, after=[0])
        yield orch, source


async def runs(db: Database) -> list[dict[str, Any]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, workflow, state::text AS state, actor, params::text AS params, "
            "logical_date, interval_end FROM runs ORDER BY logical_date"
        )
    return [{**dict(r), "params": orjson.loads(r["params"])} for r in rows]


async def logical_dates(db: Database) -> list[datetime]:
    return [r["logical_date"] for r in await runs(db)]


# -- the scheduler -----------------------------------------------------------------------


async def test_each_interval_runs_once_when_it_ends_with_templated_params(
    db_url: str, db: Database
) -> None:
    clock = ManualClock(T0)
    async with scheduler(db_url, clock, hourly(), workers=2) as (_orch, source):
        assert source.is_leader
        # First seen at 10:30: no history; the 10:00-11:00 interval runs at 11:00.
        assert await runs(db) == []
        await advance(clock, timedelta(minutes=29), source)
        assert await runs(db) == []
        await advance(clock, timedelta(minutes=1), source)  # 11:00
        await advance(clock, timedelta(minutes=30), source)  # 11:30: nothing new
        await advance(clock, timedelta(minutes=30), source)  # 12:00
        got = await runs(db)
        assert [(r["logical_date"], r["interval_end"], r["actor"]) for r in got] == [
            (utc(2026, 1, 5, 10), utc(2026, 1, 5, 11), "scheduler"),
            (utc(2026, 1, 5, 11), utc(2026, 1, 5, 12), "scheduler"),
        ]
        assert got[0]["params"] == {"day": "2026-01-05", "at": "2026-01-05T11:00:00+01:00"}
        states = await wait_for_runs(db, [r["id"] for r in got], timeout=20)
        assert set(states.values()) == {RunState.SUCCESS}
        async with db.pool.acquire() as conn:
            [task] = await conn.fetch(SQL.task_instances_of_run, got[1]["id"])
            keys = await conn.fetch("SELECT dedup_key FROM events ORDER BY id")
        assert orjson.loads(task["output"]) == {
            "logical": "2026-01-05T11:00:00+00:00",
            "end": "2026-01-05T12:00:00+00:00",
            "day": "2026-01-05",
        }
        assert [k["dedup_key"] for k in keys] == [
            "schedule:hourly:2026-01-05T10:00:00+00:00",
            "schedule:hourly:2026-01-05T11:00:00+00:00",
        ]


@pytest.mark.parametrize(
    ("catchup", "expected_hours"),
    [("all", [10, 11, 12, 13, 14]), ("latest", [10, 13, 14]), ("none", [10, 14])],
)
async def test_catchup_policy_after_downtime(
    db_url: str, db: Database, catchup: Literal["all", "latest", "none"], expected_hours: list[int]
) -> None:
    clock = ManualClock(T0)
    spec = hourly(catchup)
    async with scheduler(db_url, clock, spec) as (_orch, source):
        await advance(clock, timedelta(minutes=30), source)  # 11:00: the 10:00 run
    assert await logical_dates(db) == [utc(2026, 1, 5, 10)]
    # Down from 11:00 to 14:20: the 11:00, 12:00 and 13:00 intervals ended meanwhile.
    await clock.advance(timedelta(hours=3, minutes=20))
    async with scheduler(db_url, clock, spec) as (_orch, source):
        await advance(clock, timedelta(minutes=40), source)  # 15:00: the 14:00 run
    assert await logical_dates(db) == [utc(2026, 1, 5, h) for h in expected_hours]


async def test_two_schedulers_create_each_run_once_and_one_takes_over(
    db_url: str, db: Database
) -> None:
    clock = ManualClock(T0)
    spec = hourly()
    async with (
        scheduler(db_url, clock, spec) as (_a, first),
        scheduler(db_url, clock, spec) as (b_orch, second),
    ):
        assert [first.is_leader, second.is_leader] == [True, False]
        for _ in range(3):
            await advance(clock, HOUR, first, second)
        assert await logical_dates(db) == [utc(2026, 1, 5, h) for h in (10, 11, 12)]
        assert first.is_leader and not second.is_leader
        # The leader stops (its session ends): the other leads from its next tick.
        await first.stop()
        await advance(clock, HOUR, second)
        assert second.is_leader
        await advance(clock, HOUR, second)
        assert await logical_dates(db) == [utc(2026, 1, 5, h) for h in (10, 11, 12, 13, 14)]
        assert b_orch.sources == [second]


@pytest.fixture
async def another_deployment_leading(pg_admin_url: str) -> AsyncIterator[None]:
    """Another deployment's scheduler leads in its own database on the same
    server: advisory locks belong to a database, so it must neither block
    this one's scheduler nor count among its leaders."""
    name = f"orch_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(await create_database(pg_admin_url, name))
    try:
        assert await conn.fetchval(TRIGGERS_SQL.scheduler_try_lead, LEADER_LOCK)
        yield
    finally:
        await conn.close()
        await drop_database(pg_admin_url, name)


async def leader_sessions(db: Database) -> int:
    """Sessions holding the scheduler's lock in this test's database."""
    async with db.pool.acquire() as conn:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = ($1::bigint >> 32) AND objid = ($1::bigint & x'ffffffff'::bigint)",
            LEADER_LOCK,
        )
    return n


async def test_a_leader_whose_session_dies_is_replaced_without_double_runs(
    db_url: str, db: Database, another_deployment_leading: None
) -> None:
    clock = ManualClock(T0)
    spec = hourly()
    async with (
        scheduler(db_url, clock, spec) as (_a, first),
        scheduler(db_url, clock, spec) as (_b, second),
    ):
        await advance(clock, HOUR, first, second)
        assert [first.is_leader, second.is_leader] == [True, False]
        assert await leader_sessions(db) == 1
        async with db.pool.acquire() as conn:
            # Waits until the backend is gone, so its lock is free at the next tick.
            killed = await conn.fetchval(
                "SELECT bool_and(pg_terminate_backend(pid, 10000)) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        assert killed
        # At its next tick the old leader finds its session gone and steps down,
        # whatever error the dead connection gives; exactly one replica leads.
        await advance(clock, HOUR, first, second)
        assert [first.is_leader, second.is_leader].count(True) == 1
        for _ in range(2):
            await advance(clock, HOUR, first, second)
        # Exactly one replica leads again, and every interval ran exactly once.
        assert [first.is_leader, second.is_leader].count(True) == 1
        assert await logical_dates(db) == [utc(2026, 1, 5, h) for h in (10, 11, 12, 13)]
        assert await leader_sessions(db) == 1


async def test_a_date_taken_by_a_manual_run_is_skipped_not_fatal(db_url: str, db: Database) -> None:
    clock = ManualClock(T0)
    spec = hourly("all")
    async with scheduler(db_url, clock, spec) as (orch, source):
        assert orch.engine is not None and orch.intake is not None
        manual = await orch.engine.trigger(
            "hourly", {"day": "x"}, actor="test", logical_date=utc(2026, 1, 5, 10)
        )
        await advance(clock, timedelta(minutes=90), source)  # 12:00: 10:00 and 11:00 due
        got = await runs(db)
        assert [(r["logical_date"], r["actor"]) for r in got] == [
            (utc(2026, 1, 5, 10), "test"),
            (utc(2026, 1, 5, 11), "scheduler"),
        ]
        assert source.is_leader
        # Backfill sees both dates taken, and names the runs that hold them.
        result = await backfill(
            orch.intake, spec, utc(2026, 1, 5, 10), utc(2026, 1, 5, 12), max_active=1
        )
    assert result.created == {}
    assert result.existed == {utc(2026, 1, 5, 10): manual, utc(2026, 1, 5, 11): got[1]["id"]}


# -- backfill ----------------------------------------------------------------------------


async def max_concurrent_backfill_runs(db: Database) -> int:
    """From the transition log: most backfill runs created and not yet ended at once."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT t.from_state, t.to_state FROM transitions t JOIN runs r ON r.id = t.run_id "
            "WHERE t.task_id IS NULL AND r.actor = 'backfill' ORDER BY t.id"
        )
    active = peak = 0
    for row in rows:
        if row["from_state"] is None:
            active += 1
        elif row["to_state"] in {"success", "failed", "cancelled"}:
            active -= 1
        peak = max(peak, active)
    return peak


async def test_backfill_runs_the_range_with_at_most_max_active_at_once(
    db_url: str, db: Database
) -> None:
    spec = daily()
    messages: list[str] = []
    async with Orchestrator(
        settings(worker_slots=4), db_url, registry=builtin_registry(), workflows=[spec]
    ) as orch:
        assert orch.intake is not None
        result = await backfill(
            orch.intake,
            spec,
            datetime(2026, 1, 1),
            datetime(2026, 1, 7),
            max_active=2,
            dry_run=False,
            progress=messages.append,
            poll_s=0.2,
        )
    assert any("read as wall-clock time in Europe/Paris" in m for m in messages)
    # 02:00 in Paris is 01:00 UTC in January.
    days = [utc(2026, 1, d, 1) for d in range(1, 7)]
    assert sorted(result.created) == days and result.existed == {}
    assert result.ok and set(result.final.values()) == {RunState.SUCCESS}
    got = await runs(db)
    assert [r["logical_date"] for r in got] == days
    assert {r["actor"] for r in got} == {"backfill"}
    assert got[0]["params"] == {"day": "2026-01-01"}
    assert await max_concurrent_backfill_runs(db) == 2


async def test_backfill_dry_run_and_rerun_start_nothing_twice(db_url: str, db: Database) -> None:
    spec = daily()
    start, end = utc(2026, 2, 1), utc(2026, 2, 4)
    async with Orchestrator(
        settings(worker_slots=4), db_url, registry=builtin_registry(), workflows=[spec]
    ) as orch:
        assert orch.intake is not None
        intake = orch.intake
        messages: list[str] = []
        dry = await backfill(
            intake, spec, start, end, max_active=2, dry_run=True, progress=messages.append
        )
        assert [i.logical_date for i in dry.intervals] == [utc(2026, 2, d, 1) for d in (1, 2, 3)]
        assert await runs(db) == []
        assert sum("would create" in m for m in messages) == 3
        first = await backfill(intake, spec, start, end, max_active=2, dry_run=False, poll_s=0.2)
        again = await backfill(intake, spec, start, end, max_active=2, dry_run=False, poll_s=0.2)
    assert len(first.created) == 3
    assert again.created == {} and again.existed == {d: first.created[d] for d in first.created}
    assert len(await runs(db)) == 3


async def test_backfill_and_scheduler_never_run_a_date_twice(db_url: str, db: Database) -> None:
    spec = daily(catchup="all", start=datetime(2026, 1, 1))
    clock = ManualClock(utc(2026, 1, 3, 12))
    async with Orchestrator(
        settings(worker_slots=4), db_url, registry=builtin_registry(), workflows=[spec]
    ) as orch:
        assert orch.intake is not None
        early = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 2), max_active=1, dry_run=False
        )
    assert list(early.created) == [utc(2026, 1, 1, 1)]
    # The scheduler catches up from 1 January: that date exists already.
    async with scheduler(db_url, clock, spec, workers=4) as (orch, _source):
        assert await logical_dates(db) == [utc(2026, 1, 1, 1), utc(2026, 1, 2, 1)]
        assert orch.intake is not None
        late = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 3), max_active=1, dry_run=False
        )
    assert late.created == {}
    assert set(late.existed) == {utc(2026, 1, 1, 1), utc(2026, 1, 2, 1)}
    assert [r["actor"] for r in await runs(db)] == ["backfill", "scheduler"]


async def run_ids(db: Database) -> list[int]:
    async with db.pool.acquire() as conn:
        return [r["id"] for r in await conn.fetch("SELECT id FROM runs ORDER BY id")]


async def test_dates_that_already_have_runs_leave_no_gap_in_run_ids(
    db_url: str, db: Database
) -> None:
    """Backfill and the scheduler meet dates taken by a manual run or by an
    earlier backfill; none of it may use up a run id, so run ids stay dense."""
    spec = hourly("all")
    clock = ManualClock(T0)
    async with scheduler(db_url, clock, spec, workers=2) as (orch, source):
        assert orch.engine is not None and orch.intake is not None
        await orch.engine.trigger(
            "hourly", {"day": "x"}, actor="test", logical_date=utc(2026, 1, 5, 10)
        )
        # 12:00: 10:00 (taken by the manual run) and 11:00 are due in one batch.
        await advance(clock, timedelta(minutes=90), source)
        for _ in range(2):  # 08:00 and 09:00 new the first time; all taken the second
            await backfill(
                orch.intake, spec, utc(2026, 1, 5, 8), utc(2026, 1, 5, 12), max_active=4, poll_s=0.2
            )
        await advance(clock, HOUR, source)  # 13:00: 12:00 is due
        assert await logical_dates(db) == [utc(2026, 1, 5, h) for h in (8, 9, 10, 11, 12)]
    ids = await run_ids(db)
    assert ids == list(range(ids[0], ids[0] + 5))


async def test_backfill_refuses_bad_requests_clearly(engine: Any) -> None:
    intake = Intake(engine)
    unscheduled = WorkflowSpec(name="plain", tasks=(TaskSpec(id="t", handler="noop"),))
    with pytest.raises(BackfillError, match="no schedule trigger"):
        await backfill(intake, unscheduled, utc(2026, 1, 1), utc(2026, 1, 2), max_active=1)
    with pytest.raises(BackfillError, match="is not before"):
        await backfill(intake, daily(), utc(2026, 1, 2), utc(2026, 1, 1), max_active=1)
    with pytest.raises(BackfillError, match="max-active"):
        await backfill(intake, daily(), utc(2026, 1, 1), utc(2026, 1, 2), max_active=0)


# -- the example ---------------------------------------------------------------------------


async def test_the_nightly_report_example_runs_for_the_previous_day(
    db_url: str, db: Database, examples_dir: Path
) -> None:
    loaded = load_path(examples_dir / "nightly_report.yaml", base=builtin_registry())
    assert loaded.errors == []
    spec = loaded.workflows["nightly_report"]
    clock = ManualClock(utc(2026, 2, 1, 12))
    async with scheduler(db_url, clock, spec, workers=2) as (_orch, source):
        await advance(clock, timedelta(hours=13), source)  # 02:00 Paris on 2 February
        [run] = await runs(db)
        assert run["logical_date"] == utc(2026, 2, 1, 1)
        assert (await wait_for_runs(db, [run["id"]], timeout=20))[run["id"]] == RunState.SUCCESS
        async with db.pool.acquire() as conn:
            tasks = {
                t["task_id"]: t for t in await conn.fetch(SQL.task_instances_of_run, run["id"])
            }
    publish = orjson.loads(tasks["publish"]["output"])
    assert publish["message"].startswith("Sales emea for 2026-02-01 is ready")
    assert orjson.loads(tasks["collect"]["output"])["to"] == "2026-02-02T01:00:00+00:00"

"""Backfill beyond creating runs: reprocessing existing dates, intervals for
unscheduled workflows, the progress line, and the retention ledger that keeps
a pruned date processed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from cli_process import cli_runner
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import audit
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.context import TaskContext
from orchestrator.errors import TaskError
from orchestrator.registry import HandlerRegistry
from orchestrator.retention import prune_periodically
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import Database
from sources.backfill import BackfillError, Progress, backfill, interval_cron
from sources.backfill_jobs import UnknownBackfillError, cancel, drive, job, jobs, submit
from sources.models import ScheduleTrigger
from sources.schedule import ScheduleSource

pytestmark = pytest.mark.timeout(60)

settings = partial(suite_settings, worker_slots=4)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def daily(name: str = "daily") -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(
            TaskSpec(id="load", handler="flaky", inputs={"day": "{{ params.day }}"}),
            TaskSpec(id="report", handler="noop", upstream=("load",)),
        ),
        triggers=(ScheduleTrigger(cron="0 0 * * *", params={"day": "{{ meta.date }}"}),),
    )


PLAIN = WorkflowSpec(name="plain", tasks=(TaskSpec(id="t", handler="noop"),))


class Flaky:
    """A handler failing (for good) on the days in :attr:`bad`."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.calls: list[str] = []

    def handler(self) -> Any:
        async def flaky(ctx: TaskContext, *, day: str = "") -> dict[str, Any]:
            self.calls.append(day)
            if day in self.bad:
                raise TaskError(f"bad data for {day}", non_retryable=True)
            return {"day": day}

        return flaky


def registry(flaky: Flaky) -> HandlerRegistry:
    found = builtin_registry()
    found.register("flaky", flaky.handler())
    return found


async def scalar(db: Database, sql: str, *args: object) -> Any:
    async with db.pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def test_a_pruned_range_is_processed_and_a_backfill_starts_nothing(
    db_url: str, db: Database
) -> None:
    spec, flaky = daily(), Flaky()
    async with Orchestrator(
        settings(), db_url, registry=registry(flaky), workflows=[spec, PLAIN]
    ) as orch:
        assert orch.intake is not None
        first = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 4), actor="cli:ana", reason="init"
        )
        assert len(first.created) == 3 and first.ok
        assert await scalar(db, "SELECT count(*) FROM runs") == 3
        # Retention runs on an injected clock 31 days on: the runs and their
        # events are pruned, the audit log is not.
        clock = ManualClock(SYSTEM_CLOCK.now() + timedelta(days=31))
        pruner = asyncio.create_task(
            prune_periodically(db, clock, retention=timedelta(days=30), interval_s=3600, batch=2)
        )
        try:

            async def pruned() -> bool:
                runs = await scalar(db, "SELECT count(*) FROM runs")
                events = await scalar(db, "SELECT count(*) FROM events")
                return bool(runs == 0 and events == 0)

            await eventually(pruned, what="retention pruning the runs and events")
        finally:
            pruner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pruner
        assert await scalar(db, "SELECT count(*) FROM logical_dates_pruned") == 3
        [entry] = await audit.entries(db, action="backfill")
        assert (entry.actor, entry.reason, entry.workflow) == ("cli:ana", "init", "daily")
        assert entry.detail["start"] == "2026-01-01T00:00:00+00:00"

        messages: list[str] = []
        again = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 5), progress=messages.append
        )
        # Only 4 January, never processed, is created.
        assert list(again.created) == [utc(2026, 1, 4)]
        assert sorted(again.pruned) == [utc(2026, 1, d) for d in (1, 2, 3)]
        assert {p.run_id for p in again.pruned.values()} == set(first.created.values())
        assert sum("its history was pruned" in m for m in messages) == 3

        messages.clear()
        nothing = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 4), progress=messages.append
        )
        assert nothing.created == {} and len(nothing.pruned) == 3
        assert any("nothing to start" in m for m in messages)
        dry: list[str] = []
        await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 4), dry_run=True, progress=dry.append
        )
        assert "0 run(s) would be created" in dry[-1] and "3 processed and pruned" in dry[-1]
    assert await scalar(db, "SELECT count(*) FROM runs") == 1
    # One entry per backfill that started something; pruning kept them all.
    assert len(await audit.entries(db, action="backfill")) == 2


async def test_unscheduled_workflows_backfill_over_an_interval_or_a_cron(
    db_url: str, db: Database
) -> None:
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry(), workflows=[PLAIN]
    ) as orch:
        assert orch.intake is not None
        with pytest.raises(BackfillError, match="give --interval 1d or --cron EXPR"):
            await backfill(orch.intake, PLAIN, utc(2026, 1, 1), utc(2026, 1, 2))
        by_interval = await backfill(
            orch.intake, PLAIN, utc(2026, 1, 1), utc(2026, 1, 2), interval="6h"
        )
        assert sorted(by_interval.created) == [utc(2026, 1, 1, h) for h in (0, 6, 12, 18)]
        assert by_interval.ok
        by_cron = await backfill(
            orch.intake, PLAIN, utc(2026, 1, 1), utc(2026, 1, 3), cron="0 12 * * *"
        )
        assert list(by_cron.created) == [utc(2026, 1, 2, 12)]
        assert list(by_cron.existed) == [utc(2026, 1, 1, 12)]
        with pytest.raises(BackfillError, match="not both"):
            await backfill(
                orch.intake,
                PLAIN,
                utc(2026, 1, 1),
                utc(2026, 1, 2),
                interval="1h",
                cron="* * * * *",
            )
        with pytest.raises(BackfillError, match="not a valid cron"):
            await backfill(orch.intake, PLAIN, utc(2026, 1, 1), utc(2026, 1, 2), cron="nope")
    assert await scalar(db, "SELECT count(*) FROM runs WHERE workflow = 'plain'") == 5


def test_intervals_become_cron_expressions_or_are_refused_clearly() -> None:
    assert interval_cron("15m") == "*/15 * * * *"
    assert interval_cron("1h") == "0 * * * *"
    assert interval_cron("6h") == "0 */6 * * *"
    assert interval_cron("1d") == "0 0 * * *"
    assert interval_cron("1w") == "0 0 * * 1"
    for bad in ("7h", "2d", "0m", "soon", ""):
        with pytest.raises(BackfillError, match="--interval"):
            interval_cron(bad)


async def test_progress_lines_count_and_estimate_at_a_sane_rate() -> None:
    clock = ManualClock(utc(2026, 1, 1))
    lines: list[str] = []
    meter = Progress(10, clock, lines.append, every_s=2.0)
    meter.update(0, 2, 0)
    meter.update(1, 2, 0)  # no time has passed: not shown
    await clock.advance(10)
    meter.update(2, 2, 1)
    await clock.advance(1)
    meter.update(3, 2, 1)  # within 2 s of the last line
    await clock.advance(30)
    meter.update(10, 0, 1)
    assert lines == [
        "0 of 10 done, 2 running, 0 failed, ETA unknown",
        "2 of 10 done, 2 running, 1 failed, ETA 0:00:40",
        "10 of 10 done, 0 running, 1 failed, done",
    ]


async def test_an_attached_backfill_reports_progress_and_failures(
    db_url: str, db: Database
) -> None:
    spec, flaky = daily(), Flaky()
    flaky.bad = {"2026-01-02"}
    lines: list[str] = []
    async with Orchestrator(settings(), db_url, registry=registry(flaky), workflows=[spec]) as orch:
        assert orch.intake is not None
        result = await backfill(
            orch.intake,
            spec,
            utc(2026, 1, 1),
            utc(2026, 1, 4),
            max_active=1,
            status=lines.append,
            clock=ManualClock(utc(2026, 6, 1)),
        )
    assert not result.ok and len(result.failed) == 1
    # Time stands still: the first line and the last one, nothing in between.
    assert lines == [
        "0 of 3 done, 0 running, 0 failed, ETA unknown",
        "3 of 3 done, 0 running, 1 failed, done",
    ]


async def test_reprocess_failed_reruns_only_the_failed_dates_in_their_runs(
    db_url: str, db: Database
) -> None:
    spec, flaky = daily(), Flaky()
    flaky.bad = {"2026-01-02", "2026-01-04"}
    async with Orchestrator(settings(), db_url, registry=registry(flaky), workflows=[spec]) as orch:
        assert orch.intake is not None
        first = await backfill(orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 6))
        failed = {d for d, run in first.created.items() if first.final[run] != RunState.SUCCESS}
        assert failed == {utc(2026, 1, 2), utc(2026, 1, 4)}
        flaky.bad.clear()  # the data was fixed
        flaky.calls.clear()
        fixed = await backfill(
            orch.intake,
            spec,
            utc(2026, 1, 1),
            utc(2026, 1, 6),
            reprocess="failed",
            actor="cli:ana",
            reason="bad data fixed",
        )
        assert fixed.created == {}
        assert fixed.reprocessed == {d: first.created[d] for d in failed}
        assert fixed.ok and set(fixed.final.values()) == {RunState.SUCCESS}
        assert sorted(flaky.calls) == ["2026-01-02", "2026-01-04"]

        flaky.calls.clear()
        everything = await backfill(
            orch.intake, spec, utc(2026, 1, 1), utc(2026, 1, 6), reprocess="all", actor="cli:bo"
        )
        assert everything.reprocessed == first.created and everything.ok
        assert len(flaky.calls) == 5
    assert await scalar(db, "SELECT count(*) FROM runs") == 5
    entries = await audit.entries(db, action="backfill")
    assert [(e.actor, e.reason, e.detail["reprocess"]) for e in entries] == [
        ("cli:bo", "", "all"),
        ("cli:ana", "bad data fixed", "failed"),
        ("backfill", "", None),
    ]


# -- detached backfills ----------------------------------------------------------------


async def ticked(source: ScheduleSource, after: int) -> None:
    async def probe() -> bool:
        return source.ticks > after

    await eventually(probe, what="a scheduler tick")


async def test_a_detached_backfill_is_driven_by_the_leader_until_done(
    db_url: str, db: Database
) -> None:
    clock = ManualClock(utc(2026, 6, 1))
    source = ScheduleSource()
    async with Orchestrator(
        settings(schedule_tick_s=60),
        db_url,
        registry=builtin_registry(),
        workflows=[PLAIN],
        sources=[source],
        clock=clock,
    ) as orch:
        assert orch.intake is not None
        await ticked(source, 0)
        made, _found = await submit(
            orch.intake,
            "plain",
            "2026-01-01",
            "2026-01-06",
            now=clock.now(),
            interval="1d",
            max_active=2,
            actor="cli:ana",
            reason="history",
        )
        assert made is not None and made.state == "running" and made.counts["total"] == 5
        # A second request for the same range has nothing left to start once
        # the first is driven; submitted now, it would start the same dates
        # once only (runs are unique per date).
        steps: list[str] = []

        async def finished() -> bool:
            before = source.ticks
            await clock.advance(60)
            await ticked(source, before)
            current = await job(db, made.id)
            steps.append(current.progress())
            return current.state == "done"

        await eventually(finished, what="the detached backfill to end", timeout=30)
        done = await job(db, made.id)
        assert done.counts["created"] == 5 and done.counts["succeeded"] == 5
        assert done.active == [] and done.progress() == "5 of 5 done, 0 running, 0 failed"
        assert done.message.startswith("done: 5 created")
        # Never more than max_active runs in flight at once.
        assert all(int(s.split(", ")[1].split()[0]) <= 2 for s in steps)
        again, found = await submit(
            orch.intake,
            "plain",
            "2026-01-01",
            "2026-01-06",
            now=clock.now(),
            interval="1d",
            actor="cli:ana",
        )
        assert again is None and len(found.existing) == 5
    assert await scalar(db, "SELECT count(*) FROM runs") == 5
    [entry] = await audit.entries(db, action="backfill")
    assert (entry.actor, entry.reason, entry.detail["backfill"]) == ("cli:ana", "history", made.id)


async def test_a_detached_backfill_can_be_listed_and_cancelled(engine: Any, db: Database) -> None:
    from orchestrator.intake import Intake

    await engine.register([PLAIN])
    intake = Intake(engine)
    made, _ = await submit(
        intake,
        "plain",
        "2026-02-01",
        "2026-03-01",
        now=utc(2026, 6, 1),
        interval="1d",
        max_active=1,
        actor="cli:ana",
    )
    assert made is not None and made.counts["total"] == 28
    stepped = await drive(intake, made.id, now=utc(2026, 6, 1))
    assert stepped.counts["started"] == 1 and len(stepped.active) == 1
    assert [j.id for j in await jobs(db, workflow="plain", state="running")] == [made.id]
    cancelled = await cancel(db, made.id, actor="cli:bo", reason="wrong range")
    assert cancelled.state == "cancelled" and cancelled.message == "cancelled by cli:bo"
    after = await drive(intake, made.id, now=utc(2026, 6, 1))
    assert after.counts["started"] == 1  # a cancelled backfill starts nothing more
    assert await scalar(db, "SELECT count(*) FROM runs") == 1
    with pytest.raises(BackfillError, match="is cancelled: only a running backfill"):
        await cancel(db, made.id, actor="cli:bo")
    with pytest.raises(UnknownBackfillError, match="no backfill 999"):
        await cancel(db, 999, actor="cli:bo")
    with pytest.raises(BackfillError, match="unknown backfill state"):
        await jobs(db, state="paused")
    [entry] = await audit.entries(db, action="cancel")
    assert (entry.actor, entry.reason) == ("cli:bo", "wrong range")
    assert entry.detail == {"backfill": made.id}


@pytest.mark.timeout(120)  # a few CLI processes, each importing the package
def test_the_cli_detaches_lists_shows_and_cancels_backfills(db_url: str) -> None:

    async def prepare() -> None:
        from orchestrator.engine import Engine
        from orchestrator.store import connect

        db = await connect(db_url, size=2, min_size=1)
        try:
            await Engine(db).register([PLAIN])
        finally:
            await db.close()

    asyncio.run(prepare())
    cli = cli_runner(db_url)

    made = cli(
        "backfill",
        "plain",
        "--start",
        "2026-01-01",
        "--end",
        "2026-01-03",
        "--interval",
        "1d",
        "--detach",
        "--reason",
        "replay",
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("backfill 1 of plain: 2 date(s) to run")
    listed = cli("backfills", "--state", "running")
    assert listed.returncode == 0 and "0 of 2 done, 0 running, 0 failed" in listed.stdout
    shown = cli("backfills", "show", "1")
    assert "backfill 1 of plain: running" in shown.stdout and "replay" in shown.stdout
    assert cli("backfills", "cancel", "1").returncode == 0
    again = cli("backfills", "cancel", "1")
    assert again.returncode == 2 and "only a running backfill can be cancelled" in again.stderr
    refused = cli("backfill", "plain", "--start", "2026-01-01", "--end", "2026-01-03", "--detach")
    assert refused.returncode == 2 and "--interval 1d or --cron EXPR" in refused.stderr


async def test_the_api_creates_lists_shows_and_cancels_backfills(db_url: str, db: Database) -> None:
    import aiohttp
    import orjson

    async with Orchestrator(
        settings(worker_slots=0),
        db_url,
        registry=builtin_registry(),
        workflows=[PLAIN],
        http=True,
    ) as orch:
        assert orch.http is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        async with aiohttp.ClientSession(base_url=base) as client:

            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                kwargs: dict[str, Any] = {}
                if body is not None:
                    kwargs = {
                        "data": orjson.dumps(body),
                        "headers": {"Content-Type": "application/json"},
                    }
                async with client.request(method, path, **kwargs) as resp:
                    return resp.status, await resp.json(content_type=None)

            good = {"workflow": "plain", "start": "2026-01-01", "end": "2026-01-04"}
            status, made = await call(
                "POST", "/api/v1/backfills", {**good, "interval": "1d", "reason": "api"}
            )
            assert status == 201, made
            assert made["state"] == "running" and made["counts"]["total"] == 3
            assert made["actor"].startswith("api:") and made["reason"] == "api"
            status, listed = await call("GET", "/api/v1/backfills?workflow=plain&state=running")
            assert [b["id"] for b in listed["items"]] == [made["id"]]
            status, shown = await call("GET", f"/api/v1/backfills/{made['id']}")
            assert status == 200 and shown["progress"] == "0 of 3 done, 0 running, 0 failed"
            status, cancelled = await call(
                "POST", f"/api/v1/backfills/{made['id']}/cancel", {"reason": "oops"}
            )
            assert status == 200 and cancelled["state"] == "cancelled"
            bad = [
                ("POST", f"/api/v1/backfills/{made['id']}/cancel", {}, 409, "is cancelled"),
                ("POST", "/api/v1/backfills/999/cancel", {}, 404, "no backfill 999"),
                ("GET", "/api/v1/backfills/999", None, 404, "no backfill 999"),
                ("GET", "/api/v1/backfills/abc", None, 400, "id must be an integer"),
                ("GET", "/api/v1/backfills?state=paused", None, 400, "unknown state"),
                ("POST", "/api/v1/backfills", {"workflow": "plain"}, 400, "start: Field required"),
                ("POST", "/api/v1/backfills", {**good, "max_active": 0}, 400, "max_active: "),
                ("POST", "/api/v1/backfills", {**good, "reprocess": "some"}, 400, "reprocess: "),
                ("POST", "/api/v1/backfills", {**good, "dry": True}, 400, "unexpected key"),
                ("POST", "/api/v1/backfills", good, 400, "no schedule trigger"),
                ("POST", "/api/v1/backfills", {**good, "start": "soon"}, 400, "ISO 8601"),
                (
                    "POST",
                    "/api/v1/backfills",
                    {**good, "interval": "1d", "cron": "* * * * *"},
                    400,
                    "not both",
                ),
                ("POST", "/api/v1/backfills", {**good, "workflow": "plane"}, 404, "did you mean"),
            ]
            for method, path, body, want, detail in bad:
                status, problem = await call(method, path, body)
                assert (status, detail in problem["detail"]) == (want, True), (path, problem)
    assert len(await backfill_list(db)) == 1
    assert await scalar(db, "SELECT count(*) FROM runs") == 0


async def backfill_list(db: Database) -> list[Any]:
    return await jobs(db)

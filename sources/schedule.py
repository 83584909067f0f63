"""The cron scheduler: one leader among the replicas turns due schedule
intervals into runs.

Leadership is a PostgreSQL session advisory lock held on a dedicated
connection: the replica whose ``pg_try_advisory_lock`` succeeds ticks; the
others try again every tick. When the leader stops, or its connection dies,
the session ends, the lock is released, and another replica takes over at
its next tick. The leader writes through that same connection, so a replica
that lost its session can no longer write anything.

Each tick, for every schedule trigger of the loaded workflows, the leader
reads the schedule's progress (``schedules.done_until``), asks
:func:`sources.cron.plan_catchup` which complete intervals to run, and in one
transaction ingests one event per interval and advances the progress. An
event's dedup key is ``schedule:<workflow>:<logical date in UTC, ISO 8601>``
— the same key :mod:`sources.backfill` uses — and runs are unique per
(workflow, logical date), so a date never runs twice, whoever creates it.

Between due times a tick costs no database work beyond one ``SELECT 1``
(proof that the leader's session is alive): the next due time of each
schedule is kept in memory and recomputed from the database whenever
leadership or the loaded workflows change. Every couple of seconds the leader
also looks for detached backfills to drive (one indexed query when there are
none; see :mod:`sources.backfill_jobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from orchestrator.clock import Clock
from orchestrator.errors import DuplicateRunError, OrchestratorError
from orchestrator.intake import Accepted, DeadLetter, Event, Intake, Router
from orchestrator.pausing import paused_among
from orchestrator.sources import SourceContext, loop_stopped
from orchestrator.templates import TemplateError, render
from sources.cron import (
    CronError,
    CronSchedule,
    Interval,
    first_watermark,
    plan_catchup,
    schedule_of,
)
from sources.models import ScheduleTrigger
from sources.queries import SQL

__all__ = [
    "APPLICATION_NAME",
    "LEADER_LOCK",
    "ScheduleSource",
    "dedup_key",
    "ingest_intervals",
    "interval_event",
    "trigger_key",
]

log = logging.getLogger(__name__)

#: The advisory lock whose holder is the one replica that ticks ("orchsch").
LEADER_LOCK = 0x6F726368736368
#: Detached backfills are driven at most this often (seconds), by the leader.
BACKFILL_EVERY_S = 2.0
#: ``application_name`` of the leadership connection (visible in pg_stat_activity).
APPLICATION_NAME = "orchestrator-scheduler"

# What a broken leadership connection looks like; anything else is a bug or a
# bad schedule, logged without giving up leadership. InternalClientError is
# what asyncpg raises for a statement sent after the server ended the session
# (its FATAL read) but before the socket's close was seen.
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def trigger_key(trigger: ScheduleTrigger) -> str:
    """Progress is kept per (workflow, cron, time zone): editing a trigger's
    params or catch-up policy keeps it, a new cron or zone starts afresh."""
    return f"{trigger.cron}|{trigger.timezone}"


def dedup_key(workflow: str, logical_date: datetime) -> str:
    """The event key of one (workflow, logical date), shared with backfill."""
    return f"schedule:{workflow}:{logical_date.astimezone(UTC).isoformat()}"


def interval_meta(
    trigger: ScheduleTrigger, interval: Interval, *, backfill: bool = False
) -> dict[str, Any]:
    """``meta`` of a schedule event: times in the schedule's zone, plus
    ``date``, the logical date's calendar day there (``YYYY-MM-DD``)."""
    schedule = schedule_of(trigger)
    start = schedule.local(interval.start)
    meta: dict[str, Any] = {
        "logical_date": start.isoformat(),
        "interval_start": start.isoformat(),
        "interval_end": schedule.local(interval.end).isoformat(),
        "date": start.date().isoformat(),
        "cron": trigger.cron,
        "timezone": trigger.timezone,
    }
    if backfill:
        meta["backfill"] = True
    return meta


def interval_event(
    workflow: str, trigger: ScheduleTrigger, interval: Interval, *, backfill: bool = False
) -> Event | DeadLetter:
    """The event that starts ``workflow`` for ``interval``, or a dead letter
    when the trigger's params cannot be rendered."""
    meta = interval_meta(trigger, interval, backfill=backfill)
    key = dedup_key(workflow, interval.start)
    scope = {"payload": None, "headers": {}, "meta": meta}
    try:
        params = render(trigger.params, scope)
    except TemplateError as exc:
        return DeadLetter("schedule", workflow, key, f"params mapping failed: {exc}", meta=meta)
    if not isinstance(params, dict):  # pragma: no cover - trigger.params is a dict
        return DeadLetter("schedule", workflow, key, "params mapping did not give an object")
    return Event(
        source="schedule",
        channel=workflow,
        dedup_key=key,
        meta=meta,
        workflow=workflow,
        params=params,
        logical_date=interval.start,
        interval_end=interval.end,
    )


async def ingest_intervals(
    conn: asyncpg.Connection,
    intake: Intake,
    events: Sequence[Event],
    *,
    dead_letters: Sequence[DeadLetter] = (),
    actor: str,
) -> list[Accepted | None]:
    """Ingest schedule events inside the caller's transaction; one answer per
    event, ``None`` where that (workflow, logical date) already had a run that
    no schedule event started (a manual trigger with that logical date, or
    another schedule trigger of the workflow)."""
    taken = await _dates_taken(conn, events)
    for i in sorted(taken):
        _log_taken(events[i])
    fresh = [e for i, e in enumerate(events) if i not in taken]
    if not fresh and not dead_letters:
        return [None] * len(events)
    try:
        async with conn.transaction():  # a savepoint: a clash undoes only this
            stored = iter(
                await intake.ingest_in(conn, fresh, dead_letters=dead_letters, actor=actor)
            )
            return [None if i in taken else next(stored) for i in range(len(events))]
    except DuplicateRunError:
        pass  # a run for one of the dates was created meanwhile: one at a time
    answers: list[Accepted | None] = []
    for i, event in enumerate(events):
        if i in taken:
            answers.append(None)
            continue
        try:
            async with conn.transaction():
                answers.extend(await intake.ingest_in(conn, [event], actor=actor))
        except DuplicateRunError:
            _log_taken(event)
            answers.append(None)
    if dead_letters:
        await intake.ingest_in(conn, [], dead_letters=dead_letters, actor=actor)
    return answers


async def _dates_taken(conn: asyncpg.Connection, events: Sequence[Event]) -> set[int]:
    """Positions of the events whose (workflow, logical date) has a run already
    that no event with their key started. They are left out rather than let
    run into the unique index: that would undo the batch after it had drawn
    its run ids, leaving gaps in them."""
    if not events:
        return set()
    rows = await conn.fetch(
        SQL.logical_dates_taken,
        [e.workflow for e in events],
        [e.logical_date for e in events],
        [e.dedup_key for e in events],
    )
    return {r["n"] - 1 for r in rows}


def _log_taken(event: Event) -> None:
    log.info(
        "%s: a run for logical date %s exists already; not started again",
        event.workflow,
        event.meta.get("logical_date"),
    )


@dataclass(frozen=True, slots=True)
class _Schedule:
    workflow: str
    trigger: ScheduleTrigger
    key: str

    @property
    def times(self) -> CronSchedule:
        return schedule_of(self.trigger)


class _Paused(OrchestratorError):
    """The workflow was paused between the look and the transaction."""


class _LostLeadership(OrchestratorError):
    """The progress row moved under us: another replica is (or was) leading."""


class ScheduleSource:
    """The ``scheduler`` source (see the module docs)."""

    name = "scheduler"

    def __init__(self, *, missed_grace_s: float | None = None, batch_limit: int = 1000) -> None:
        """``missed_grace_s``: for ``catchup: none``, intervals that ended up to
        this long before this replica became leader still run, so a handover
        between replicas loses nothing (default: 60 s, and at least two ticks).
        ``batch_limit``: most runs one schedule creates in one transaction
        while catching up (``catchup: all``); the rest follow at once."""
        self._missed_grace_s = missed_grace_s
        self._batch_limit = batch_limit
        self._ctx: SourceContext | None = None
        self._schedules: list[_Schedule] = []
        self._next_due: dict[tuple[str, str], datetime] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.leader_since: datetime | None = None
        """Clock time at which this replica last became leader."""
        self.last_tick: datetime | None = None
        """Clock time of the last tick this replica completed as leader."""
        self.ticks = 0
        """Loop iterations completed (as leader or not): tests wait on it."""
        self._backfills_at: datetime | None = None

    # -- Source protocol ---------------------------------------------------------

    def setup(self, ctx: SourceContext) -> None:
        self._ctx = ctx

    def use_router(self, router: Router) -> None:
        self._schedules = [
            _Schedule(route.workflow, route.trigger, trigger_key(route.trigger))
            for route in router.routes_of("schedule")
            if isinstance(route.trigger, ScheduleTrigger)
        ]
        # Re-read progress for whatever is loaded now.
        self._next_due.clear()

    async def start(self) -> None:
        if self._ctx is None:
            raise OrchestratorError("ScheduleSource.start() before setup()")
        self._task = asyncio.create_task(self._run(), name="orchestrator-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()

    async def not_ready(self) -> str | None:
        return loop_stopped(self._task, "the scheduler loop")

    # -- the loop ------------------------------------------------------------------

    @property
    def _clock(self) -> Clock:
        assert self._ctx is not None
        return self._ctx.clock

    @property
    def _tick_s(self) -> float:
        assert self._ctx is not None
        return self._ctx.settings.schedule_tick_s

    async def _run(self) -> None:
        while True:
            more = False
            try:
                more = await self._step()
            except _CONNECTION_ERRORS as exc:
                if self.is_leader:
                    log.warning("scheduler: leadership connection failed (%s); stepping down", exc)
                else:
                    log.warning("scheduler: cannot reach PostgreSQL (%s); retrying", exc)
                await self._drop_connection()
            except _LostLeadership:
                log.warning("scheduler: another replica moved a schedule; stepping down")
                await self._drop_connection()
            except Exception:
                # A bug must not end scheduling for good: log it, try next tick.
                log.exception("scheduler: tick failed")
            self.ticks += 1
            if more:
                await asyncio.sleep(0)  # catching up: go on, but let others run
            else:
                await self._clock.sleep(self._tick_s)

    async def _step(self) -> bool:
        """Lead if possible, then tick; True when more is due at once."""
        assert self._ctx is not None
        conn = self._conn
        if conn is None or conn.is_closed():
            self._set_follower()
            conn = self._conn = await asyncpg.connect(
                self._ctx.engine.db.url,
                timeout=10,
                command_timeout=60,
                server_settings={"application_name": APPLICATION_NAME},
            )
        now = self._clock.now()
        if not self.is_leader:
            if not await conn.fetchval(SQL.scheduler_try_lead, LEADER_LOCK):
                return False
            self.is_leader = True
            self.leader_since = now
            self._next_due.clear()
            log.info("scheduler: this replica is now the leader")
        else:
            await conn.fetchval(SQL.scheduler_alive)
        more = await self._tick(conn, now)
        if self._backfills_at is None or now >= self._backfills_at:
            self._backfills_at = now + timedelta(seconds=max(self._tick_s, BACKFILL_EVERY_S))
            await self._drive_backfills(now)
        self.last_tick = now
        return more

    async def _drive_backfills(self, now: datetime) -> None:
        """One step of each detached backfill (:mod:`sources.backfill_jobs`);
        a failing one is logged and tried again, never stops the schedules."""
        from sources.backfill_jobs import drive_all

        assert self._ctx is not None
        try:
            await drive_all(self._ctx.intake, now=now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("scheduler: driving backfills failed; trying again")

    def _set_follower(self) -> None:
        self.is_leader = False
        self._next_due.clear()

    async def _drop_connection(self) -> None:
        self._set_follower()
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            # Ending the session releases the advisory lock.
            await asyncio.shield(conn.close(timeout=2))
        except Exception:
            conn.terminate()

    # -- one tick --------------------------------------------------------------------

    def _missed_before(self) -> datetime:
        assert self.leader_since is not None
        grace = self._missed_grace_s
        if grace is None:
            grace = max(60.0, 2 * self._tick_s)
        return self.leader_since - timedelta(seconds=grace)

    async def _tick(self, conn: asyncpg.Connection, now: datetime) -> bool:
        due = [
            s
            for s in self._schedules
            if (when := self._next_due.get((s.workflow, s.key))) is None or when <= now
        ]
        if not due:
            return False
        progress = await self._progress(conn, due, now)
        more = False
        for schedule in due:
            try:
                more |= await self._advance(
                    conn, schedule, progress[schedule.workflow, schedule.key], now
                )
            except (CronError, OrchestratorError) as exc:
                # One broken schedule (an unregistered workflow, a cron that
                # never fires) must not stop the others; retried next tick.
                log.error("scheduler: %s (%s): %s", schedule.workflow, schedule.trigger.cron, exc)
        return more

    async def _progress(
        self, conn: asyncpg.Connection, due: Sequence[_Schedule], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        workflows = [s.workflow for s in due]
        keys = [s.key for s in due]
        rows = await conn.fetch(SQL.schedule_states, workflows, keys)
        found = {(r["workflow"], r["trigger_key"]): r["done_until"] for r in rows}
        new = [s for s in due if (s.workflow, s.key) not in found]
        if new:
            starts = [first_watermark(s.trigger, now) for s in new]
            await conn.execute(
                SQL.schedule_first_seen,
                [s.workflow for s in new],
                [s.key for s in new],
                [s.trigger.cron for s in new],
                [s.trigger.timezone for s in new],
                starts,
            )
            for s, start in zip(new, starts, strict=True):
                log.info(
                    "scheduler: %s (%s in %s) starts from %s",
                    s.workflow,
                    s.trigger.cron,
                    s.trigger.timezone,
                    s.times.local(start).isoformat(),
                )
            rows = await conn.fetch(SQL.schedule_states, workflows, keys)
            found = {(r["workflow"], r["trigger_key"]): r["done_until"] for r in rows}
        return found

    @staticmethod
    async def _paused(conn: asyncpg.Connection, s: _Schedule) -> bool:
        async with conn.transaction():
            return bool(await paused_among(conn, [s.workflow]))

    async def _advance(
        self, conn: asyncpg.Connection, s: _Schedule, done_until: datetime, now: datetime
    ) -> bool:
        try:
            return await self._advance_unpaused(conn, s, done_until, now)
        except _Paused:
            self._next_due[s.workflow, s.key] = now
            return False

    async def _advance_unpaused(
        self, conn: asyncpg.Connection, s: _Schedule, done_until: datetime, now: datetime
    ) -> bool:
        assert self._ctx is not None
        plan = plan_catchup(
            s.trigger,
            done_until,
            now,
            missed_before=self._missed_before(),
            limit=self._batch_limit,
        )
        if plan.done_until != done_until and await self._paused(conn, s):
            # Its intervals wait: done_until stays, and at unpause the
            # schedule catches up per its own catchup policy.
            self._next_due[s.workflow, s.key] = now
            return False
        if plan.skipped is not None:
            log.info(
                "scheduler: %s: catchup %s skips intervals starting from %s to %s",
                s.workflow,
                s.trigger.catchup,
                s.times.local(plan.skipped[0]).isoformat(),
                s.times.local(plan.skipped[1]).isoformat(),
            )
        if plan.done_until != done_until:
            made = [interval_event(s.workflow, s.trigger, i) for i in plan.run]
            events = [e for e in made if isinstance(e, Event)]
            letters = [e for e in made if isinstance(e, DeadLetter)]
            answers: list[Accepted | None] = []
            async with conn.transaction():
                if await paused_among(conn, [s.workflow]):
                    raise _Paused  # paused since the look above: wait, as it does
                if events or letters:
                    answers = await ingest_intervals(
                        conn, self._ctx.intake, events, dead_letters=letters, actor="scheduler"
                    )
                moved = await conn.fetchval(
                    SQL.schedule_advance,
                    s.workflow,
                    s.key,
                    done_until,
                    plan.done_until,
                    plan.run[-1].start if plan.run else None,
                )
                if not moved:
                    raise _LostLeadership
            started = [
                (e.meta["logical_date"], a.run_ids)
                for e, a in zip(events, answers, strict=True)
                if a is not None and not a.duplicate
            ]
            if len(started) <= 3:
                for logical_date, run_ids in started:
                    log.info("scheduler: %s for %s: run %s", s.workflow, logical_date, run_ids)
            else:
                log.info(
                    "scheduler: %s: %d runs for %s to %s",
                    s.workflow,
                    len(started),
                    started[0][0],
                    started[-1][0],
                )
        more = bool(plan.run) and len(plan.run) >= self._batch_limit
        first = s.times.next_fire(plan.done_until, inclusive=True)
        self._next_due[s.workflow, s.key] = now if more else s.times.next_fire(first)
        return more

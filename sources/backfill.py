"""Backfill: runs for the past intervals of a workflow's schedule.

``orchestrator backfill WORKFLOW --start … --end …`` creates one run per
interval of the workflow's schedule trigger(s) whose logical date (interval
start) lies in ``[start, end)``, through the same intake and with the same
event keys as the scheduler (:func:`sources.schedule.dedup_key`): a date the
scheduler already ran, or an earlier backfill created, is reported as
"already existed" and not started again. At most ``max_active`` of the runs
this backfill created are unfinished at any time: it creates some, waits for
some to end, creates more. Intervals that have not ended yet are left to the
scheduler, which creates them when they end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError, unknown_workflow_hint
from orchestrator.intake import Accepted, DeadLetter, Event, Intake
from orchestrator.pausing import paused_among
from orchestrator.run_waiter import RunWaiter
from orchestrator.spec import WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL
from sources.cron import Interval, schedule_of
from sources.models import ScheduleTrigger
from sources.queries import SQL as TRIGGERS_SQL
from sources.schedule import ingest_intervals, interval_event

__all__ = ["BackfillError", "BackfillResult", "backfill", "registered_spec"]


class BackfillError(OrchestratorError):
    """The backfill request itself is wrong; nothing was created."""


@dataclass
class BackfillResult:
    workflow: str
    dry_run: bool
    intervals: list[Interval] = field(default_factory=list)
    """Ended intervals with a logical date in range, oldest first (UTC)."""
    created: dict[datetime, int] = field(default_factory=dict)
    """Logical date -> the run this backfill created (dry run: none)."""
    existed: dict[datetime, int | None] = field(default_factory=dict)
    """Logical date -> the run that already existed (scheduler, earlier backfill, manual)."""
    not_ended: list[Interval] = field(default_factory=list)
    """Intervals in range that have not ended yet: left to the scheduler."""
    final: dict[int, RunState] = field(default_factory=dict)
    """How each created run ended."""
    dead_letters: list[str] = field(default_factory=list)
    """Intervals whose trigger params could not be rendered, or were refused
    by the params the workflow declares."""

    @property
    def failed(self) -> list[int]:
        return [run for run, state in self.final.items() if state != RunState.SUCCESS]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.dead_letters


def _quiet(_message: str) -> None:
    pass


async def registered_spec(intake: Intake, workflow: str) -> WorkflowSpec:
    """The spec new runs of ``workflow`` start with, as stored in the database."""
    engine = intake.engine
    async with engine.db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.current_versions, [workflow])
        if row is None:
            known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
            raise BackfillError(
                f"unknown workflow {workflow!r}: it has not been registered with this database"
                f"{unknown_workflow_hint(workflow, known)}"
            )
    return (await engine.compiled_workflow(row["current_version"])).spec


def _plan(
    spec: WorkflowSpec,
    start: datetime,
    end: datetime,
    now: datetime,
    progress: Callable[[str], None],
) -> tuple[
    dict[datetime, tuple[ScheduleTrigger, Interval]], list[tuple[ScheduleTrigger, Interval]]
]:
    triggers = [t for t in spec.triggers if isinstance(t, ScheduleTrigger)]
    if not triggers:
        raise BackfillError(
            f"workflow {spec.name!r} has no schedule trigger: backfill creates one run per "
            "interval of a cron schedule (add a trigger with source: schedule)"
        )
    zones = sorted({t.timezone for t in triggers})
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None:
            progress(
                f"--{name} {value.isoformat()} has no UTC offset: read as wall-clock time in "
                f"{', '.join(zones)} (the schedule's time zone)"
            )
    due: dict[datetime, tuple[ScheduleTrigger, Interval]] = {}
    not_ended: list[tuple[ScheduleTrigger, Interval]] = []
    for trigger in triggers:
        schedule = schedule_of(trigger)
        lo, hi = schedule.utc(start), schedule.utc(end)
        if lo >= hi:
            raise BackfillError(
                f"--start {schedule.local(lo).isoformat()} is not before "
                f"--end {schedule.local(hi).isoformat()}"
            )
        for interval in schedule.logical_dates(lo, hi):
            if interval.end > now:
                not_ended.append((trigger, interval))
            else:
                # Two triggers with one logical date make one run, as they
                # would for the scheduler.
                due.setdefault(interval.start, (trigger, interval))
    return dict(sorted(due.items())), sorted(not_ended, key=lambda ti: ti[1])


async def backfill(
    intake: Intake,
    spec: WorkflowSpec,
    start: datetime,
    end: datetime,
    *,
    max_active: int = 4,
    dry_run: bool = False,
    progress: Callable[[str], None] = _quiet,
    now: datetime | None = None,
    poll_s: float = 1.0,
) -> BackfillResult:
    """Create (and see through) the runs of ``spec``'s schedule for logical
    dates in ``[start, end)``; naive datetimes are wall-clock time in the
    schedule's zone. ``now`` (default: the system clock) decides which
    intervals have ended."""
    if max_active < 1:
        raise BackfillError(f"--max-active must be at least 1, not {max_active}")
    now = now or SYSTEM_CLOCK.now()
    planned, not_ended = _plan(spec, start, end, now, progress)
    result = BackfillResult(spec.name, dry_run, [iv for _t, iv in planned.values()], {}, {})
    result.not_ended = [iv for _t, iv in not_ended]
    if not_ended:
        trigger, interval = not_ended[0]
        first = schedule_of(trigger).local(interval.start)
        progress(
            f"{len(not_ended)} interval(s) from {first.isoformat()} on have not ended yet: "
            "the scheduler creates them when they end"
        )
    if not planned:
        progress(f"{spec.name}: no ended interval has a logical date in the range")
        return result
    db = intake.engine.db
    if dry_run:
        async with db.pool.acquire() as conn:
            rows = await conn.fetch(TRIGGERS_SQL.runs_at_logical_dates, spec.name, list(planned))
        existing = {r["logical_date"]: r["id"] for r in rows}
        for logical, (trigger, _interval) in planned.items():
            local = schedule_of(trigger).local(logical).isoformat()
            if logical in existing:
                result.existed[logical] = existing[logical]
                progress(f"exists       {local}  (run {existing[logical]})")
            else:
                progress(f"would create {local}")
        progress(
            f"dry run: {len(planned) - len(existing)} run(s) would be created, "
            f"{len(existing)} already exist; nothing was changed"
        )
        return result
    progress(f"{spec.name}: {len(planned)} interval(s) to backfill, at most {max_active} at a time")
    pending = list(planned.items())
    active: dict[int, str] = {}
    async with RunWaiter(db, poll_s=poll_s) as ends:
        while pending or active:
            room = max_active - len(active)
            if pending and room > 0:
                batch, pending = pending[:room], pending[room:]
                await _create(intake, spec.name, batch, result, active, progress)
                continue
            for run_id, state in sorted((await ends.first_ended(active)).items()):
                result.final[run_id] = state
                progress(f"run {run_id} for {active.pop(run_id)}: {state.value}")
    progress(
        f"done: {len(result.created)} created ({len(result.final) - len(result.failed)} "
        f"succeeded, {len(result.failed)} did not), {len(result.existed)} already existed"
    )
    return result


async def _create(
    intake: Intake,
    workflow: str,
    batch: list[tuple[datetime, tuple[ScheduleTrigger, Interval]]],
    result: BackfillResult,
    active: dict[int, str],
    progress: Callable[[str], None],
) -> None:
    made = [(t, interval_event(workflow, t, iv, backfill=True)) for _d, (t, iv) in batch]
    events = [(t, e) for t, e in made if isinstance(e, Event)]
    letters = [e for _t, e in made if isinstance(e, DeadLetter)]
    for letter in letters:
        result.dead_letters.append(letter.reason)
        progress(f"not created: {letter.meta.get('logical_date')}: {letter.reason}")
    db = intake.engine.db
    async with db.transaction() as conn:
        # Under the pause lock: a pause that commits after this look waits for
        # this transaction, so no run of the backfill starts while paused.
        if await paused_among(conn, [workflow]):
            raise BackfillError(
                f"workflow {workflow!r} is paused: a backfill starts no run of it "
                f"(`orchestrator unpause {workflow}` first)"
            )
        answers: list[Accepted | None] = await ingest_intervals(
            conn, intake, [e for _t, e in events], dead_letters=letters, actor="backfill"
        )
        clashes = [e.logical_date for (_t, e), a in zip(events, answers, strict=True) if a is None]
        rows = (
            await conn.fetch(TRIGGERS_SQL.runs_at_logical_dates, workflow, clashes)
            if clashes
            else []
        )
    other = {r["logical_date"]: r["id"] for r in rows}
    for (_trigger, event), answer in zip(events, answers, strict=True):
        assert event.logical_date is not None
        local = str(event.meta["logical_date"])
        if answer is None or answer.duplicate:
            run_id = answer.run_ids[0] if answer and answer.run_ids else None
            result.existed[event.logical_date] = run_id or other.get(event.logical_date)
            progress(f"already existed: {local} (run {result.existed[event.logical_date]})")
        elif not answer.run_ids:  # the workflow refused the params: a dead letter
            result.dead_letters.extend(answer.dead_letters)
            for reason in answer.dead_letters:
                progress(f"not created: {local}: {reason}")
        else:
            [run_id] = answer.run_ids
            result.created[event.logical_date] = run_id
            active[run_id] = local
            progress(f"created run {run_id} for {local}")

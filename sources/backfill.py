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

A workflow without a schedule trigger is backfilled over ``--interval``
(``15m``, ``1h``, ``1d``, ``1w``) or ``--cron`` intervals instead, with the same
keys. ``--reprocess failed|all`` clears and reruns the dates whose runs exist
(those that failed, or all that ended) inside their own runs, through
:func:`orchestrator.operations.clear_run`. A date whose run retention has
deleted counts as processed (the ``logical_dates_pruned`` ledger): it is
reported, never created again, and cannot be reprocessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from orchestrator import audit
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import OrchestratorError, unknown_workflow_hint
from orchestrator.intake import Accepted, DeadLetter, Event, Intake
from orchestrator.pausing import paused_among
from orchestrator.retention import PrunedDate, pruned_dates
from orchestrator.run_waiter import RunWaiter
from orchestrator.spec import WorkflowSpec
from orchestrator.states import RunState
from orchestrator.store import SQL
from sources.cron import Interval, schedule_of
from sources.models import ScheduleTrigger
from sources.queries import SQL as TRIGGERS_SQL
from sources.schedule import ingest_intervals, interval_event

__all__ = [
    "REPROCESS",
    "BackfillError",
    "BackfillResult",
    "Progress",
    "Survey",
    "backfill",
    "interval_cron",
    "registered_spec",
    "survey",
]

#: What ``--reprocess`` may say: rerun the dates whose runs failed, or every ended one.
REPROCESS = ("failed", "all")
Reprocess = Literal["failed", "all"]


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
    pruned: dict[datetime, PrunedDate] = field(default_factory=dict)
    """Logical date -> its run, processed and since deleted by retention: not run again."""
    reprocessed: dict[datetime, int] = field(default_factory=dict)
    """Logical date -> the existing run this backfill cleared and reran."""
    not_reprocessed: dict[datetime, str] = field(default_factory=dict)
    """Logical date -> why its existing run was not reprocessed (still live, refused)."""

    @property
    def failed(self) -> list[int]:
        return [run for run, state in self.final.items() if state != RunState.SUCCESS]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.dead_letters


def _quiet(_message: str) -> None:
    pass


_INTERVAL = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def interval_cron(text: str) -> str:
    """The cron expression of an ``--interval``: ``Nm`` (N divides 60), ``Nh``
    (N divides 24), ``1d`` or ``1w`` (weeks start on Monday)."""
    match = _INTERVAL.match(text)
    if match is None:
        raise BackfillError(f"--interval {text!r} is not an interval such as 15m, 1h, 6h, 1d or 1w")
    n, unit = int(match[1]), match[2]
    if unit == "m" and n > 0 and 60 % n == 0:
        return "* * * * *" if n == 1 else f"*/{n} * * * *"
    if unit == "h" and n > 0 and 24 % n == 0:
        return "0 * * * *" if n == 1 else f"0 */{n} * * *"
    if unit == "d" and n == 1:
        return "0 0 * * *"
    if unit == "w" and n == 1:
        return "0 0 * * 1"
    raise BackfillError(
        f"--interval {text!r} does not divide the hour or day evenly: use minutes that "
        "divide 60, hours that divide 24, 1d or 1w (or --cron for anything else)"
    )


def _triggers(spec: WorkflowSpec, cron: str | None, timezone: str) -> list[ScheduleTrigger]:
    scheduled = [t for t in spec.triggers if isinstance(t, ScheduleTrigger)]
    if cron is None:
        return scheduled
    params = scheduled[0].params if scheduled else {}
    try:
        return [ScheduleTrigger(cron=cron, timezone=timezone, params=params)]
    except ValueError as exc:
        raise BackfillError(f"--cron {cron!r} / --timezone {timezone!r}: {exc}") from None


class Progress:
    """The status line of an attached backfill: n of m done, running, failed,
    and an ETA from the pace so far, at most once per ``every_s`` of ``clock``
    time (and always at the end)."""

    def __init__(
        self, total: int, clock: Clock, emit: Callable[[str], None], *, every_s: float = 2.0
    ) -> None:
        self.total = total
        self.clock = clock
        self.emit = emit
        self.every_s = every_s
        self.started = clock.now()
        self._last: datetime | None = None
        self._shown = ""

    def line(self, done: int, running: int, failed: int) -> str:
        elapsed = (self.clock.now() - self.started).total_seconds()
        if done >= self.total:
            eta = "done"
        elif done and elapsed > 0:
            eta = "ETA " + str(timedelta(seconds=round(elapsed / done * (self.total - done))))
        else:
            eta = "ETA unknown"
        return f"{done} of {self.total} done, {running} running, {failed} failed, {eta}"

    def update(self, done: int, running: int, failed: int, *, force: bool = False) -> None:
        now = self.clock.now()
        due = self._last is None or (now - self._last).total_seconds() >= self.every_s
        if force or due or done >= self.total:
            text = self.line(done, running, failed)
            if text != self._shown:  # the same line again says nothing new
                self._last, self._shown = now, text
                self.emit(text)


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
    triggers: list[ScheduleTrigger],
    start: datetime,
    end: datetime,
    now: datetime,
    progress: Callable[[str], None],
) -> tuple[
    dict[datetime, tuple[ScheduleTrigger, Interval]], list[tuple[ScheduleTrigger, Interval]]
]:
    if not triggers:
        raise BackfillError(
            f"workflow {spec.name!r} has no schedule trigger: backfill creates one run per "
            "interval of a cron schedule (add a trigger with source: schedule, or give "
            "--interval 1d or --cron EXPR)"
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


@dataclass
class Survey:
    """What a backfill of a range finds: its dates, the runs that hold some of
    them, and what is left to create or to reprocess."""

    spec: WorkflowSpec
    triggers: list[ScheduleTrigger]
    planned: dict[datetime, tuple[ScheduleTrigger, Interval]]
    existing: dict[datetime, tuple[int, str]]
    """Logical date -> (run id, run state)."""
    to_create: list[datetime]
    to_clear: list[tuple[datetime, int]]
    result: BackfillResult

    def local(self, logical: datetime) -> str:
        return schedule_of(self.planned[logical][0]).local(logical).isoformat()

    @property
    def work(self) -> list[tuple[datetime, int | None]]:
        """Oldest first: (date, None) to create, (date, run id) to reprocess."""
        return sorted([(d, None) for d in self.to_create] + list(self.to_clear))


def check_request(
    max_active: int, reprocess: str | None, cron: str | None, interval: str | None
) -> str | None:
    """Refuse a bad request before anything is read; the cron expression to use."""
    if max_active < 1:
        raise BackfillError(f"--max-active must be at least 1, not {max_active}")
    if cron is not None and interval is not None:
        raise BackfillError("give --interval or --cron, not both")
    if reprocess is not None and reprocess not in REPROCESS:
        raise BackfillError(f"--reprocess must be one of {', '.join(REPROCESS)}, not {reprocess!r}")
    return interval_cron(interval) if interval is not None else cron


async def survey(
    intake: Intake,
    spec: WorkflowSpec,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    reprocess: Reprocess | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    progress: Callable[[str], None] = _quiet,
) -> Survey:
    """The dates of ``[start, end)`` and what a backfill would do with each."""
    triggers = _triggers(spec, cron, timezone)
    planned, not_ended = _plan(spec, triggers, start, end, now, progress)
    result = BackfillResult(spec.name, False, [iv for _t, iv in planned.values()], {}, {})
    result.not_ended = [iv for _t, iv in not_ended]
    found = Survey(spec, triggers, planned, {}, [], [], result)
    if not_ended:
        trigger, interval_ = not_ended[0]
        first = schedule_of(trigger).local(interval_.start)
        progress(
            f"{len(not_ended)} interval(s) from {first.isoformat()} on have not ended yet: "
            "the scheduler creates them when they end"
        )
    if not planned:
        return found
    db = intake.engine.db
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(TRIGGERS_SQL.runs_at_logical_dates, spec.name, list(planned))
    existing = found.existing = {r["logical_date"]: (r["id"], r["state"]) for r in rows}
    result.pruned = await pruned_dates(db, spec.name, [d for d in planned if d not in existing])
    found.to_create = [d for d in planned if d not in existing and d not in result.pruned]
    for logical, (run_id, state) in sorted(existing.items()):
        if reprocess is None:
            continue
        if state in ("queued", "running"):
            result.not_reprocessed[logical] = f"run {run_id} is still {state}"
        elif reprocess == "all" or state == "failed":
            found.to_clear.append((logical, run_id))
    return found


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
    reprocess: Reprocess | None = None,
    cron: str | None = None,
    interval: str | None = None,
    timezone: str = "UTC",
    status: Callable[[str], None] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    actor: str = "backfill",
    reason: str = "",
) -> BackfillResult:
    """Create (and see through) the runs of ``spec``'s schedule for logical
    dates in ``[start, end)``; naive datetimes are wall-clock time in the
    schedule's zone. ``now`` (default: ``clock``'s) decides which intervals
    have ended. ``cron`` or ``interval`` replace the workflow's schedule (in
    ``timezone``); ``reprocess`` clears and reruns dates whose runs exist.
    ``status`` gets a progress line (n of m, running, failed, ETA) now and
    then; ``progress`` one line per thing done. Unless a dry run, one audit
    entry (``backfill``) names ``actor``, ``reason`` and the range."""
    cron = check_request(max_active, reprocess, cron, interval)
    clear_run = clear_run_or_refuse() if reprocess is not None and not dry_run else None
    found = await survey(
        intake,
        spec,
        start,
        end,
        now=now or clock.now(),
        reprocess=reprocess,
        cron=cron,
        timezone=timezone,
        progress=progress,
    )
    result, local = found.result, found.local
    result.dry_run = dry_run
    existing, to_create, to_clear = found.existing, found.to_create, found.to_clear
    if not found.planned:
        progress(f"{spec.name}: no ended interval has a logical date in the range")
        return result
    for logical, gone in result.pruned.items():
        progress(
            f"processed    {local(logical)}  (run {gone.run_id}, {gone.state}; its history "
            "was pruned): not run again"
        )
    if dry_run:
        for logical in found.planned:
            if logical in existing:
                result.existed[logical] = existing[logical][0]
                run_id, state = existing[logical]
                again = " - would reprocess" if (logical, run_id) in to_clear else ""
                progress(f"exists       {local(logical)}  (run {run_id}, {state}){again}")
            elif logical not in result.pruned:
                progress(f"would create {local(logical)}")
        progress(
            f"dry run: {len(to_create)} run(s) would be created, {len(to_clear)} reprocessed, "
            f"{len(existing)} already exist, {len(result.pruned)} processed and pruned; "
            "nothing was changed"
        )
        return result
    for logical, (run_id, state) in sorted(existing.items()):
        result.existed[logical] = run_id
        if (logical, run_id) not in to_clear:
            progress(f"already existed: {local(logical)} (run {run_id}, {state})")
    for logical, why in result.not_reprocessed.items():
        progress(f"not reprocessed: {local(logical)}: {why}")
    if not to_create and not to_clear:
        progress(nothing_to_start(found, reprocess))
        return result
    db = intake.engine.db
    async with db.transaction() as conn:
        await audit.record(
            conn, backfill_action(found, start, end, reprocess, max_active, actor, reason)
        )
    progress(
        f"{spec.name}: {len(to_create)} interval(s) to backfill"
        + (f", {len(to_clear)} to reprocess ({reprocess})" if reprocess else "")
        + f", at most {max_active} at a time"
    )
    work = found.work
    pending = work
    active: dict[int, str] = {}
    meter = Progress(len(work), clock, status) if status is not None else None

    def report(*, force: bool = False) -> None:
        if meter is not None:
            # A date taken from the queue is either running or settled.
            done = len(work) - len(pending) - len(active)
            meter.update(done, len(active), len(result.failed), force=force)

    report(force=True)
    async with RunWaiter(db, poll_s=poll_s) as ends:
        while pending or active:
            room = max_active - len(active)
            if pending and room > 0:
                batch, pending = pending[:room], pending[room:]
                await start_dates(
                    intake, found, batch, active, progress, clear_run, reprocess, actor, reason
                )
                report()
                continue
            for run_id, state in sorted((await ends.first_ended(active)).items()):
                result.final[run_id] = state
                progress(f"run {run_id} for {active.pop(run_id)}: {state.value}")
            report()
    report(force=True)
    progress(
        f"done: {len(result.created)} created, {len(result.reprocessed)} reprocessed "
        f"({len(result.final) - len(result.failed)} succeeded, {len(result.failed)} did not), "
        f"{len(result.existed)} already existed, {len(result.pruned)} processed before "
        "(history pruned)"
    )
    return result


def nothing_to_start(found: Survey, reprocess: str | None) -> str:
    return (
        f"{found.spec.name}: nothing to start: every date in the range was processed "
        f"already ({len(found.existing)} with a run, {len(found.result.pruned)} pruned)"
        + ("" if reprocess else "; --reprocess failed|all reruns existing ones")
    )


def backfill_action(
    found: Survey,
    start: datetime,
    end: datetime,
    reprocess: str | None,
    max_active: int,
    actor: str,
    reason: str,
    **extra: Any,
) -> audit.Action:
    """The audit entry of a backfill: who, why, the range and what it does."""
    detail = _audit_detail(start, end, found.triggers, reprocess, max_active)
    detail |= {"to_create": len(found.to_create), "to_reprocess": len(found.to_clear)}
    return audit.Action(actor, "backfill", reason, workflow=found.spec.name, detail=detail | extra)


async def start_dates(
    intake: Intake,
    found: Survey,
    batch: list[tuple[datetime, int | None]],
    active: dict[int, str],
    progress: Callable[[str], None],
    clear_run: Callable[..., Any] | None,
    reprocess: Reprocess | None,
    actor: str,
    reason: str,
) -> None:
    """Create the runs of the new dates in ``batch`` and clear the existing
    ones; what starts goes into ``active`` (run id -> local date)."""
    fresh = [(d, found.planned[d]) for d, run in batch if run is None]
    if fresh:
        await _create(intake, found.spec.name, fresh, found.result, active, progress)
    for logical, run_id in batch:
        if run_id is not None:
            assert clear_run is not None and reprocess is not None
            await _reprocess(
                intake,
                clear_run,
                found.spec,
                logical,
                run_id,
                reprocess,
                found.local(logical),
                found.result,
                active,
                progress,
                actor=actor,
                reason=reason,
            )


def _audit_detail(
    start: datetime,
    end: datetime,
    triggers: list[ScheduleTrigger],
    reprocess: str | None,
    max_active: int,
) -> dict[str, Any]:
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "cron": [t.cron for t in triggers],
        "timezone": sorted({t.timezone for t in triggers}),
        "reprocess": reprocess,
        "max_active": max_active,
    }


def clear_run_or_refuse() -> Callable[..., Any]:
    """:func:`orchestrator.operations.clear_run`: how a date's run is cleared to run again."""
    from orchestrator.operations import clear_run

    found: Callable[..., Any] = clear_run
    return found


async def _reprocess(
    intake: Intake,
    clear_run: Callable[..., Any],
    spec: WorkflowSpec,
    logical: datetime,
    run_id: int,
    reprocess: Reprocess,
    local: str,
    result: BackfillResult,
    active: dict[int, str],
    progress: Callable[[str], None],
    *,
    actor: str,
    reason: str,
) -> None:
    """Clear ``run_id`` (its failed tasks, or every task) so it runs again."""
    tasks = [t.id for t in spec.tasks] if reprocess == "all" else None
    try:
        await clear_run(
            intake.engine,
            run_id,
            tasks=tasks,
            failed_only=reprocess == "failed",
            actor=actor,
            reason=reason or f"backfill --reprocess {reprocess}",
        )
    except OrchestratorError as exc:
        result.not_reprocessed[logical] = str(exc)
        progress(f"not reprocessed: {local} (run {run_id}): {exc}")
        return
    result.existed[logical] = run_id
    result.reprocessed[logical] = run_id
    active[run_id] = local
    progress(f"reprocessing run {run_id} for {local}")


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

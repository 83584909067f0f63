"""Detached backfills: ``orchestrator backfill … --detach``.

A detached backfill is a row in ``backfills`` that the scheduler's leader
keeps driving (:func:`drive_all`, called from its loop): each step notes
which of the runs it started have ended, surveys the range again (the
workflow as registered now; dates the retention ledger holds stay done),
starts the next dates after its cursor up to ``max_active`` unfinished runs,
and ends the backfill once every date is started and every run has ended.
A step is idempotent: runs are unique per (workflow, logical date), so a
step repeated after a crash or a change of leader starts nothing twice.
Cancelling stops it from starting more; runs already started go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from orchestrator import audit
from orchestrator.intake import Intake
from orchestrator.run_waiter import run_states
from orchestrator.states import RunState
from orchestrator.store import Database
from sources.backfill import (
    BackfillError,
    Reprocess,
    Survey,
    backfill_action,
    check_request,
    clear_run_or_refuse,
    registered_spec,
    start_dates,
    survey,
)
from sources.queries import SQL

__all__ = [
    "BackfillJob",
    "UnknownBackfillError",
    "cancel",
    "drive",
    "drive_all",
    "job",
    "jobs",
    "parse_when",
    "submit",
]

log = logging.getLogger(__name__)

STATES = ("running", "done", "cancelled", "failed")
_ENDED = {RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED}


class UnknownBackfillError(BackfillError):
    def __init__(self, backfill_id: int) -> None:
        self.backfill_id = backfill_id
        super().__init__(f"no backfill {backfill_id} (list them with `orchestrator backfills`)")


def parse_when(name: str, text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise BackfillError(
            f"--{name} {text!r} is not an ISO 8601 date or date-time "
            "(e.g. 2026-01-01 or 2026-01-01T02:00+01:00)"
        ) from None


@dataclass(frozen=True, slots=True)
class BackfillJob:
    id: int
    workflow: str
    start: str
    end: str
    cron: str | None
    timezone: str
    reprocess: Reprocess | None
    max_active: int
    state: str
    actor: str
    reason: str
    cursor: datetime | None
    active: list[int]
    counts: dict[str, int]
    message: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None

    def progress(self) -> str:
        c = self.counts
        done = c.get("started", 0) - len(self.active)
        return (
            f"{done} of {c.get('total', 0)} done, {len(self.active)} running, "
            f"{c.get('failed', 0)} failed"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "start": self.start,
            "end": self.end,
            "cron": self.cron,
            "timezone": self.timezone,
            "reprocess": self.reprocess,
            "max_active": self.max_active,
            "state": self.state,
            "actor": self.actor,
            "reason": self.reason,
            "cursor": None if self.cursor is None else self.cursor.isoformat(),
            "active_run_ids": self.active,
            "counts": self.counts,
            "progress": self.progress(),
            "message": self.message,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
        }


def _job(row: Any) -> BackfillJob:
    return BackfillJob(
        id=row["id"],
        workflow=row["workflow"],
        start=row["range_start"],
        end=row["range_end"],
        cron=row["cron"],
        timezone=row["timezone"],
        reprocess=row["reprocess"],
        max_active=row["max_active"],
        state=row["state"],
        actor=row["actor"],
        reason=row["reason"],
        cursor=row["cursor_date"],
        active=list(row["active"]),
        counts=orjson.loads(row["counts"]),
        message=row["message"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        ended_at=row["ended_at"],
    )


async def submit(
    intake: Intake,
    workflow: str,
    start: str,
    end: str,
    *,
    now: datetime,
    max_active: int = 4,
    reprocess: Reprocess | None = None,
    cron: str | None = None,
    interval: str | None = None,
    timezone: str = "UTC",
    actor: str,
    reason: str = "",
) -> tuple[BackfillJob | None, Survey]:
    """Record a backfill for the scheduler's leader to drive, with its audit
    entry, after checking it as an attached one would be; ``None`` when the
    range holds nothing to start (the survey says why)."""
    cron = check_request(max_active, reprocess, cron, interval)
    if reprocess is not None:
        clear_run_or_refuse()
    spec = await registered_spec(intake, workflow)
    lo, hi = parse_when("start", start), parse_when("end", end)
    found = await survey(
        intake, spec, lo, hi, now=now, reprocess=reprocess, cron=cron, timezone=timezone
    )
    work = found.work
    if not work:
        return None, found
    counts = {
        "total": len(work),
        "started": 0,
        "created": 0,
        "reprocessed": 0,
        "existed": len(found.existing),
        "pruned": len(found.result.pruned),
        "succeeded": 0,
        "failed": 0,
        "dead_letters": 0,
        "not_reprocessed": len(found.result.not_reprocessed),
    }
    async with intake.engine.db.transaction() as conn:
        backfill_id = await conn.fetchval(
            SQL.insert_backfill,
            workflow,
            start,
            end,
            cron,
            timezone,
            reprocess,
            max_active,
            actor,
            reason,
            orjson.dumps(counts).decode(),
        )
        await audit.record(
            conn,
            backfill_action(
                found, lo, hi, reprocess, max_active, actor, reason, backfill=backfill_id
            ),
        )
    return await job(intake.engine.db, backfill_id), found


async def job(db: Database, backfill_id: int) -> BackfillJob:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.backfill_by_id, backfill_id)
    if row is None:
        raise UnknownBackfillError(backfill_id)
    return _job(row)


async def jobs(
    db: Database, *, workflow: str | None = None, state: str | None = None, limit: int = 50
) -> list[BackfillJob]:
    """Backfills, newest first."""
    if state is not None and state not in STATES:
        raise BackfillError(f"unknown backfill state {state!r}; one of {', '.join(STATES)}")
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_backfills, workflow, state, limit)
    return [_job(r) for r in rows]


class BackfillEndedError(BackfillError):
    """Only a running backfill can be cancelled."""


async def cancel(db: Database, backfill_id: int, *, actor: str, reason: str = "") -> BackfillJob:
    """Stop a running backfill from starting more runs (those started go on)."""
    async with db.transaction() as conn:
        row = await conn.fetchrow(SQL.backfill_by_id, backfill_id)
        if row is None:
            raise UnknownBackfillError(backfill_id)
        if row["state"] != "running":
            raise BackfillEndedError(
                f"backfill {backfill_id} is {row['state']}: only a running backfill can be "
                "cancelled"
            )
        await conn.fetchval(SQL.cancel_backfill, backfill_id, f"cancelled by {actor}")
        await audit.record(
            conn,
            audit.Action(
                actor,
                "cancel",
                reason,
                workflow=row["workflow"],
                detail={"backfill": backfill_id},
            ),
        )
    return await job(db, backfill_id)


async def drive_all(intake: Intake, *, now: datetime) -> int:
    """One step of every running backfill; how many there were."""
    async with intake.engine.db.pool.acquire() as conn:
        ids = [r["id"] for r in await conn.fetch(SQL.running_backfill_ids)]
    for backfill_id in ids:
        try:
            await drive(intake, backfill_id, now=now)
        except BackfillError as exc:
            # E.g. its workflow is paused: it waits, and the others go on.
            log.warning("backfill %s: %s; trying again", backfill_id, exc)
    return len(ids)


async def drive(intake: Intake, backfill_id: int, *, now: datetime) -> BackfillJob:
    """One step of a running backfill (see the module docs)."""
    db = intake.engine.db
    current = await job(db, backfill_id)
    if current.state != "running":
        return current
    counts = dict(current.counts)
    active = list(current.active)
    if active:
        states = await run_states(db, active)
        still: list[int] = []
        for run_id in active:
            state = states.get(run_id)
            if state is None or state in _ENDED:
                key = "succeeded" if state == RunState.SUCCESS else "failed"
                counts[key] = counts.get(key, 0) + 1
            else:
                still.append(run_id)
        active = still
    try:
        spec = await registered_spec(intake, current.workflow)
        clear_run = clear_run_or_refuse() if current.reprocess else None
        found = await survey(
            intake,
            spec,
            parse_when("start", current.start),
            parse_when("end", current.end),
            now=now,
            reprocess=current.reprocess,
            cron=current.cron,
            timezone=current.timezone,
        )
    except BackfillError as exc:
        await _step(db, current, current.cursor, active, counts, "failed", str(exc))
        log.error("backfill %s of %s failed: %s", current.id, current.workflow, exc)
        return await job(db, backfill_id)
    pending = [(d, r) for d, r in found.work if current.cursor is None or d > current.cursor]
    batch = pending[: max(current.max_active - len(active), 0)]
    cursor = current.cursor
    if batch:
        started: dict[int, str] = {}
        await start_dates(
            intake,
            found,
            batch,
            started,
            lambda line: log.info("backfill %s: %s", current.id, line),
            clear_run,
            current.reprocess,
            current.actor,
            current.reason,
        )
        result = found.result
        counts["started"] = counts.get("started", 0) + len(batch)
        counts["created"] = counts.get("created", 0) + len(result.created)
        counts["reprocessed"] = counts.get("reprocessed", 0) + len(result.reprocessed)
        counts["dead_letters"] = counts.get("dead_letters", 0) + len(result.dead_letters)
        refused = sum(1 for d, _ in batch if d in result.not_reprocessed)
        counts["not_reprocessed"] = counts.get("not_reprocessed", 0) + refused
        active += list(started)
        cursor = batch[-1][0]
    # The range can hold more dates than at submission (intervals that have
    # ended since): they are part of it too.
    remaining = len(pending) - len(batch)
    counts["total"] = max(counts.get("total", 0), counts.get("started", 0) + remaining)
    done = not remaining and not active
    if done:
        counts["total"] = counts.get("started", 0)
    message = (
        f"done: {counts.get('created', 0)} created, {counts.get('reprocessed', 0)} reprocessed, "
        f"{counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} did not"
        if done
        else ""
    )
    await _step(db, current, cursor, active, counts, "done" if done else "running", message)
    return await job(db, backfill_id)


async def _step(
    db: Database,
    current: BackfillJob,
    cursor: datetime | None,
    active: list[int],
    counts: dict[str, int],
    state: str,
    message: str,
) -> None:
    async with db.pool.acquire() as conn:
        await conn.fetchval(
            SQL.backfill_step,
            current.id,
            cursor,
            active,
            orjson.dumps(counts).decode(),
            state,
            message,
        )

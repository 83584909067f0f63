"""What the read side knows about runs, read once for every reader.

``orchestrator runs`` / ``show`` (:mod:`orchestrator.views`, text) and
``GET /api/v1/runs[/{id}]`` (:mod:`orchestrator.api`, JSON) render these
records; neither queries the runs itself. Columns hold what the database
holds: params and outputs stay JSON text, for each reader to show or parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from orchestrator.audit import AuditEntry, audit_entry
from orchestrator.store import SQL, Database


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of the run list."""

    id: int
    workflow: str
    version: str
    state: str
    actor: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    waiting: int
    """Tasks deferred (waiting without a worker slot) right now."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    workflow: str
    version: str
    state: str
    params: str
    """JSON text."""
    logical_date: datetime | None
    actor: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    event_id: int | None = None
    """The event that started the run (GET /api/v1/events/{id}); None once
    retention pruned it, or for a run made without one."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    task_id: str
    state: str
    attempt: int
    handler: str
    pool: str
    priority: int
    output: str | None
    """JSON text, once the task succeeded."""
    error: str | None
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    not_before: datetime | None


@dataclass(frozen=True, slots=True)
class WaitRecord:
    """One wait of a deferred task: current (``waiting``) or ended (``resolved``)."""

    id: int
    task_id: str
    attempt: int
    kind: str
    state: str
    description: str
    callback_url: str | None
    """Where to POST to end an open callback wait. It holds the wait's token:
    whoever has it can end the wait, so only an operator's ``show`` prints it."""
    wake_at: datetime | None
    timeout_at: datetime | None
    on_timeout: str
    outcome: str | None
    resolved_by: str | None
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    id: int
    task_id: str | None
    """None: a change of the run's own state."""
    from_state: str | None
    to_state: str
    attempt: int | None
    at: datetime
    actor: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run with everything ``show`` and the API describe."""

    run: RunRecord
    tasks: list[TaskRecord]
    waits: list[WaitRecord]
    transitions: list[TransitionRecord]
    #: Operator actions on the run (clear, cancel, mark, ...), oldest first.
    audit: list[AuditEntry]


@dataclass(frozen=True, slots=True)
class FailedTask:
    task_id: str
    state: str
    attempt: int
    error: str | None


@dataclass(frozen=True, slots=True)
class RunIdBounds:
    """The oldest and newest run ids kept (None: no runs at all)."""

    oldest: int | None
    newest: int | None


async def list_runs(
    db: Database,
    *,
    workflow: str | None,
    state: str | None,
    limit: int,
    workflows: Sequence[str] | None = None,
    before: int | None = None,
) -> list[RunSummary]:
    """The newest runs first, optionally of one workflow (or one of
    ``workflows``: those of an owner or a tag) or in one state; ``before``
    (a run id) continues after that run."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            SQL.list_runs,
            workflow,
            state,
            limit,
            None if workflows is None else list(workflows),
            before,
        )
        counts = await conn.fetch(SQL.deferred_counts, [r["id"] for r in rows]) if rows else []
    waiting = {c["run_id"]: c["deferred"] for c in counts}
    return [RunSummary(**dict(r), waiting=waiting.get(r["id"], 0)) for r in rows]


async def read_run(db: Database, run_id: int) -> RunDetail | None:
    """The run with its tasks, waits, transitions and operator actions; None
    if there is no such run."""
    # One snapshot for every part: tasks, waits and transitions read in
    # separate statements could each see a different commit.
    async with (
        db.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        run = await conn.fetchrow(SQL.get_run, run_id)
        if run is None:
            return None
        tasks = await conn.fetch(SQL.task_instances_of_run, run_id)
        waits = await conn.fetch(SQL.deferrals_of_run, run_id)
        steps = await conn.fetch(SQL.transitions_of_run, run_id)
        actions = await conn.fetch(SQL.audit_entries, None, run_id, None, None, 1000)
    return RunDetail(
        run=RunRecord(**dict(run)),
        tasks=[TaskRecord(**dict(t)) for t in tasks],
        waits=[WaitRecord(**dict(w)) for w in waits],
        transitions=[TransitionRecord(**dict(s)) for s in steps],
        audit=[audit_entry(a) for a in reversed(actions)],
    )


async def run_record(db: Database, run_id: int) -> RunRecord | None:
    """The run alone, without its tasks; None if there is no such run."""
    async with db.pool.acquire() as conn:
        run = await conn.fetchrow(SQL.get_run, run_id)
    return None if run is None else RunRecord(**dict(run))


async def failed_tasks(db: Database, run_id: int) -> list[FailedTask]:
    """The tasks of the run that did not succeed, first failures first."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.failed_tasks_of_run, run_id)
    return [FailedTask(**dict(r)) for r in rows]


async def run_id_bounds(db: Database) -> RunIdBounds:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.run_id_bounds)
    return RunIdBounds(oldest=row["oldest"], newest=row["newest"])

"""The registered workflows as an operator sees them (``orchestrator
workflows``, ``GET /api/v1/workflows``): version, owner and tags, triggers,
paused state, next schedule time, newest run and held events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.errors import UnknownWorkflowError
from orchestrator.pausing import held_counts, pauses
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL, Database

__all__ = ["WorkflowSummary", "held_events", "list_workflows", "workflow_summary"]


@dataclass(slots=True)
class WorkflowSummary:
    name: str
    version: str
    description: str = ""
    params: list[str] | None = None
    """The params its runs accept, by name; None when this release cannot read its spec."""
    owner: str | None = None
    tags: list[str] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    """Each as ``source target`` (``kafka channel orders``, ``schedule cron '0 2 * * *' UTC``)."""
    on_pause: str = "buffer"
    paused: bool = False
    paused_at: datetime | None = None
    paused_by: str | None = None
    pause_reason: str | None = None
    hold_running: bool = False
    next_schedule: datetime | None = None
    """The soonest time a schedule trigger fires (also while paused: it then waits)."""
    live_runs: int = 0
    last_run_id: int | None = None
    last_run_state: str | None = None
    buffered: int = 0
    """Events held while paused that start runs at unpause."""
    dropped: int = 0
    """Events dropped while paused (``on_pause: drop``)."""


def _spec_of(text: str) -> WorkflowSpec | None:
    try:
        return WorkflowSpec.model_validate_json(text)
    except ValidationError:  # stored by an older release under rules since changed
        return None


async def list_workflows(
    db: Database,
    *,
    owner: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    paused: bool | None = None,
    after: str | None = None,
    limit: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> list[WorkflowSummary]:
    """Every registered workflow (or ``name``), optionally only those of
    ``owner``, carrying ``tag``, or ``paused`` (or not), by name; ``after``
    (a name) and ``limit`` page them."""
    now = clock.now()
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.workflow_page, name, after, limit, owner, tag, paused)
        found: list[WorkflowSummary] = []
        for r in rows:
            spec = _spec_of(r["spec"])
            summary = WorkflowSummary(r["name"], r["current_version"], live_runs=r["live_runs"])
            if spec is not None:
                summary.description = spec.description
                summary.params = sorted(spec.params)
                summary.owner = spec.owner
                summary.tags = list(spec.tags)
                summary.on_pause = spec.on_pause.value
                summary.triggers = [f"{t.source} {t.target()}".strip() for t in spec.triggers]
                times = [t for t in (t.next_time(now) for t in spec.triggers) if t is not None]
                summary.next_schedule = min(times) if times else None
            found.append(summary)
        names = [s.name for s in found]
        pause_of = await pauses(conn, names)
        counts = await held_counts(conn, names)
        last = {r["workflow"]: r for r in await conn.fetch(SQL.last_runs, names)}
    for s in found:
        pause = pause_of.get(s.name)
        if pause is not None:
            s.paused = True
            s.paused_at = pause.paused_at
            s.paused_by = pause.actor
            s.pause_reason = pause.reason
            s.hold_running = pause.hold_running
        held = counts.get(s.name)
        if held is not None:
            s.buffered, s.dropped = held.buffered, held.dropped
        run = last.get(s.name)
        if run is not None:
            s.last_run_id, s.last_run_state = run["id"], run["state"]
    return found


async def workflow_summary(
    db: Database, name: str, *, clock: Clock = SYSTEM_CLOCK
) -> WorkflowSummary:
    """One registered workflow, or :class:`UnknownWorkflowError` naming it."""
    found = await list_workflows(db, name=name, clock=clock)
    if not found:
        async with db.pool.acquire() as conn:
            known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
        raise UnknownWorkflowError(name, known)
    return found[0]


async def held_events(
    db: Database, workflow: str, *, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The events a paused ``workflow`` held (buffered, started or coalesced at
    unpause, dropped), newest first."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.held_events_of, workflow, state, limit)
    return [dict(r) for r in rows]

"""Who did what: the append-only record of operator actions.

Every operator action (clear, cancel, mark, pause, unpause, redrive,
backfill, pool change, token created or revoked, alert acknowledged) writes one entry with its
actor, time and reason, in the same transaction as the change it describes,
so an action is never done without its entry nor recorded without being
done. Retention leaves the table alone (the database refuses to change or
delete its rows outside an explicit prune, see migration ``0008_audit``).

The actor is decided where the action comes in: ``cli:<OS user>`` for the
command line, :func:`orchestrator.callers.actor_of` for the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.store import SQL, Database

#: The actions an entry may name (one word each, as ``audit --action`` filters them).
ACTIONS = (
    "clear",
    "cancel",
    "mark",
    "pause",
    "unpause",
    "redrive",
    "backfill",
    "pool",
    "token",
    "ack",
)


@dataclass(frozen=True, slots=True)
class Action:
    """What an operator asked for, before it is recorded."""

    actor: str
    action: str
    reason: str = ""
    workflow: str | None = None
    run_id: int | None = None
    task_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}; one of {', '.join(ACTIONS)}")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    workflow: str | None
    run_id: int | None
    task_id: str | None
    reason: str
    detail: dict[str, Any]


async def record(conn: asyncpg.Connection, action: Action) -> int:
    """Write ``action`` in the caller's transaction; returns the entry's id."""
    row = await conn.fetchrow(
        SQL.record_audit,
        action.actor,
        action.action,
        action.workflow,
        action.run_id,
        action.task_id,
        action.reason,
        orjson.dumps(dict(action.detail)).decode() if action.detail else None,
    )
    assert row is not None
    entry_id: int = row["id"]
    return entry_id


async def entries(
    db: Database,
    *,
    workflow: str | None = None,
    run_id: int | None = None,
    action: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest entries first, optionally of one workflow, run or action;
    ``before`` (an entry id) pages back."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.audit_entries, workflow, run_id, action, before, limit)
    return [audit_entry(r) for r in rows]


def audit_entry(row: asyncpg.Record) -> AuditEntry:
    return AuditEntry(**{**dict(row), "detail": orjson.loads(row["detail"])})

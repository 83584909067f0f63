"""The statements of a completion that change task instances: finished
attempts recorded, and the successors the planner decided moved (queued,
skipped, upstream_failed), in the same statement claimed for the worker
that finished their predecessors when it has room."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from orchestrator import plan as p
from orchestrator.engine_types import HandOver, claimed_from_rows
from orchestrator.states import RUN_STATE_BY_NAME, TASK_STATE_BY_NAME, TaskState
from orchestrator.store import SQL

log = logging.getLogger(__name__)


async def record_attempts(
    conn: asyncpg.Connection,
    request: p.RecordAttempts,
    actor: str,
    stamp: datetime | None,
) -> p.Recorded:
    """Lock the request's runs, then record its attempts (one statement): the
    runs, the accepted (id, attempt) pairs, and the task states of the
    candidate runs still running as they were before this batch (the planner
    overlays the batch). ``stamp``: the lease clock's time (None: the
    database's)."""
    outcomes = request.outcomes
    rows = await conn.fetch(
        SQL.record_attempts,
        request.run_ids,
        [o.id for o in outcomes],
        [o.attempt for o in outcomes],
        [o.target.value for o in outcomes],
        [o.output for o in outcomes],
        [o.error for o in outcomes],
        [o.delay_s for o in outcomes],
        [o.owner for o in outcomes],
        [o.expired_only for o in outcomes],
        [o.reason or o.target.value for o in outcomes],
        TaskState.RUNNING.value,
        actor,
        request.candidates,
        stamp,
    )
    runs: dict[int, p.LockedRun] = {}
    accepted: set[tuple[int, int]] = set()
    states: dict[int, dict[str, TaskState]] = {}
    for r in rows:
        if r["id"] is not None:
            accepted.add((r["id"], r["attempt"]))
        elif r["task_id"] is not None:
            states.setdefault(r["run_id"], {})[r["task_id"]] = TASK_STATE_BY_NAME[r["state"]]
        else:
            run_id = r["run_id"]
            runs[run_id] = p.LockedRun(
                run_id, r["workflow"], r["version"], RUN_STATE_BY_NAME[r["state"]]
            )
    return p.Recorded(runs, frozenset(accepted), states)


async def apply_moves(
    conn: asyncpg.Connection,
    moves: Sequence[p.Move],
    actor: str,
    claim: HandOver | None = None,
    lease_s: float = 0.0,
    stamp: datetime | None = None,
) -> int:
    """Move the tasks, each guarded by its source state; how many were queued.
    With ``claim``, the same statement claims up to what it has room for (the
    successors first at equal priority, each leased for ``lease_s`` from
    ``stamp``), and what it claimed is added to ``claim``."""
    rows = await conn.fetch(
        SQL.apply_decisions,
        [m.run_id for m in moves],
        [m.task_id for m in moves],
        [m.source.value for m in moves],
        [m.target.value for m in moves],
        [m.reason for m in moves],
        actor,
        claim.owner if claim else None,
        claim.room() if claim else 0,
        lease_s,
        stamp,
    )
    first = rows[0]
    if first["moved"] != len(moves):
        log.error(
            "guarded successor update moved %d of %d task instances", first["moved"], len(moves)
        )
    if claim is not None:
        claim.claimed += claimed_from_rows(rows)
        claim.limited_waiting = bool(claim.limited_waiting) or first["limited_waiting"]
    queued: int = first["queued"]
    return queued

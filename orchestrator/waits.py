"""Deferred waits in the database: recording them when an attempt defers, and
ending them, each exactly once, whatever ends them (an event, a callback, a
timer, a poll, another run). The decisions (which waits end, how their tasks
move) are made by :mod:`orchestrator.plan`; these are the statements the
engine answers its requests with, inside its transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.deferral import Resolution
from orchestrator.plan import DeferredMove, EndedWait, MovedTask, Outcome, WaitOnRun
from orchestrator.states import TASK_STATE_BY_NAME
from orchestrator.store import SQL


async def record(
    conn: asyncpg.Connection, outcomes: Sequence[Outcome], stamp: datetime | None
) -> list[Resolution]:
    """Write the waits of attempts that just deferred (time limits counted
    from ``stamp``, the clock's time; None: the database's); return
    resolutions for those whose event was already recorded (the check-then-wait race is
    closed by the key locks, taken by the commit before anything else, that
    intake takes too)."""
    waits = [(o, o.deferral) for o in outcomes if o.deferral is not None]
    rows = await conn.fetch(
        SQL.insert_deferrals,
        [o.id for o, _ in waits],
        [o.run_id for o, _ in waits],
        [o.task_id for o, _ in waits],
        [o.attempt for o, _ in waits],
        [d.kind for _, d in waits],
        [d.match_key for _, d in waits],
        [d.match_pattern for _, d in waits],
        [d.since for _, d in waits],
        [orjson.dumps(d.config).decode() for _, d in waits],
        [d.description for _, d in waits],
        [d.wake_at for _, d in waits],
        [d.timeout_s for _, d in waits],
        [d.on_timeout for _, d in waits],
        [d.resume for _, d in waits],
        stamp,
    )
    found = []
    keyed = [r for r in rows if r["match_key"]]
    if keyed:
        found += await conn.fetch(
            SQL.events_for_keys,
            [r["id"] for r in keyed],
            [r["match_key"] for r in keyed],
            [r["since"] for r in keyed],
        )
    patterned = [r["id"] for r in rows if r["match_pattern"]]
    if patterned:
        found += await conn.fetch(SQL.events_for_patterns, patterned)
    ended_runs: list[Resolution] = []
    if any(d.kind == "run" for _, d in waits):
        ended_runs = [
            Resolution(
                r["deferral_id"],
                "success",
                {"run_id": r["run_id"]},
                reason=f"run {r['run_id']} had already ended",
            )
            for r in await conn.fetch(SQL.runs_for_waits, [r["id"] for r in rows])
        ]
    return ended_runs + [
        Resolution(
            deferral_id=f["deferral_id"],
            outcome="success",
            payload=event_output(f["event_id"], f["payload"], f["meta"]),
            reason="event had already arrived",
            event_id=f["event_id"],
        )
        for f in found
    ]


async def waiting_on(conn: asyncpg.Connection, keys: Sequence[str]) -> list[WaitOnRun]:
    return [
        WaitOnRun(r["id"], r["match_key"]) for r in await conn.fetch(SQL.waiting_for_keys, keys)
    ]


async def runs_of(conn: asyncpg.Connection, wait_ids: Sequence[int]) -> list[int]:
    return [r["run_id"] for r in await conn.fetch(SQL.deferral_runs, list(wait_ids))]


async def end(
    conn: asyncpg.Connection, resolutions: Sequence[Resolution], actor: str
) -> list[EndedWait]:
    """End the waits still waiting; the guard ends each once."""
    rows = await conn.fetch(
        SQL.resolve_deferrals,
        [r.deferral_id for r in resolutions],
        [r.outcome for r in resolutions],
        [r.event_id for r in resolutions],
        actor,
    )
    return [
        EndedWait(
            r["id"], r["task_instance_id"], r["run_id"], r["task_id"], r["attempt"], r["resume"]
        )
        for r in rows
    ]


async def end_tasks(
    conn: asyncpg.Connection, moves: Sequence[DeferredMove], actor: str
) -> list[MovedTask]:
    """Move the tasks of ended waits out of ``deferred`` (guarded by attempt)."""
    document = orjson.dumps(
        [
            (m.task_instance_id, m.attempt, m.target.value, m.output, m.error, m.resumed, m.reason)
            for m in moves
        ]
    ).decode()
    rows = await conn.fetch(SQL.end_deferred_tasks, document, actor)
    state = TASK_STATE_BY_NAME.__getitem__
    return [MovedTask(r["run_id"], r["task_id"], state(r["state"])) for r in rows]


def event_output(event_id: int, payload: str | None, meta: str | None) -> dict[str, Any]:
    """What a sensor satisfied by an event returns: the event itself."""
    return {
        "event_id": event_id,
        "payload": orjson.loads(payload) if payload else None,
        "meta": orjson.loads(meta) if meta else {},
    }

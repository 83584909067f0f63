"""Deferred waits in the database: recording them when an attempt defers, and
ending them, each exactly once, whatever ends them (an event, a callback, a
timer, a poll, another run). Called by the engine inside its transactions."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from orchestrator.deferral import Resolution
from orchestrator.states import TERMINAL_TASK_STATES, RunState, TaskState
from orchestrator.store import SQL

if TYPE_CHECKING:
    from orchestrator.engine import Engine, Outcome


async def record(
    engine: Engine, conn: asyncpg.Connection, outcomes: Sequence[Outcome]
) -> list[Resolution]:
    """Write the waits of attempts that just deferred; return resolutions for
    those whose event was already recorded (the check-then-wait race is
    closed by the key locks that intake takes too)."""
    waits = [(o, o.deferral) for o in outcomes if o.deferral is not None]
    keys = sorted({d.match_key for _, d in waits if d.match_key})
    if keys:
        await conn.execute(SQL.lock_keys, keys)
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
    )
    if any(d.wake_at is not None or d.timeout_s is not None for _, d in waits):
        await conn.execute(SQL.notify_deferrals)
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


async def resolve_in(
    engine: Engine, conn: asyncpg.Connection, resolutions: Sequence[Resolution], *, actor: str
) -> tuple[int, dict[int, RunState]]:
    """End waits in the caller's transaction, each at most once: the task
    moves out of ``deferred`` (success, failed, skipped, or queued to resume
    its handler) and its successors are decided. Returns the number of task
    instances queued and the runs that ended."""
    if not resolutions:
        return 0, {}
    by_id = {r.deferral_id: r for r in resolutions}
    run_ids = [r["run_id"] for r in await conn.fetch(SQL.deferral_runs, list(by_id))]
    runs = {r["id"]: r for r in await conn.fetch(SQL.lock_runs, sorted(run_ids))}
    ended = await conn.fetch(
        SQL.resolve_deferrals,
        list(by_id),
        [r.outcome for r in by_id.values()],
        [r.event_id for r in by_id.values()],
        actor,
    )
    if not ended:
        return 0, {}
    target = {
        "success": TaskState.SUCCESS,
        "failed": TaskState.FAILED,
        "skipped": TaskState.SKIPPED,
        "resume": TaskState.QUEUED,
    }
    chosen = []
    for row in ended:
        wanted = by_id[row["id"]]
        if wanted.outcome == "success" and row["resume"] == "handler":
            # The handler deferred mid-work: call it again with what woke it.
            wanted = Resolution(row["id"], "resume", wanted.payload, wanted.reason, wanted.event_id)
        chosen.append((row, wanted))
    moved = await conn.fetch(
        SQL.end_deferred_tasks,
        [row["task_instance_id"] for row, _ in chosen],
        [row["attempt"] for row, _ in chosen],
        [target[r.outcome].value for _, r in chosen],
        [_json_or_none(r.payload) if r.outcome == "success" else None for _, r in chosen],
        [r.error for _, r in chosen],
        [_json_or_none(r.payload) if r.outcome == "resume" else None for _, r in chosen],
        [r.reason or f"wait ended: {r.outcome}" for _, r in chosen],
        actor,
    )
    queued = sum(1 for m in moved if m["state"] == TaskState.QUEUED)
    changed: dict[int, list[str]] = defaultdict(list)
    for m in moved:
        if TaskState(m["state"]) in TERMINAL_TASK_STATES:
            changed[m["run_id"]].append(m["task_id"])
    live = [i for i in changed if i in runs and runs[i]["state"] == RunState.RUNNING]
    if not live:
        return queued, {}
    states: dict[int, dict[str, TaskState]] = defaultdict(dict)
    for r in await conn.fetch(SQL.run_task_states, live):
        states[r["run_id"]][r["task_id"]] = TaskState(r["state"])
    more, finished = await engine.advance(conn, runs, states, {i: changed[i] for i in live}, actor)
    return queued + more, finished


def _json_or_none(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def event_output(event_id: int, payload: str | None, meta: str | None) -> dict[str, Any]:
    """What a sensor satisfied by an event returns: the event itself."""
    return {
        "event_id": event_id,
        "payload": orjson.loads(payload) if payload else None,
        "meta": orjson.loads(meta) if meta else {},
    }

"""Pausing a workflow: no new run of it starts until it is unpaused.

A pause is a row in ``workflow_pauses``. Intake asks which of the workflows a
batch would start are paused (:func:`paused_among`, one query per batch that
starts runs) and, for those, records the event's runs as *held* instead of
starting them, per the workflow's ``on_pause`` policy
(:class:`~orchestrator.spec.OnPause`):

- ``buffer``: held as ``buffered``; :func:`unpause_workflow` starts one run per
  held event, in arrival order, in its own transaction: exactly once (the run
  names its event, ``runs.event_id``, and the held row names its run; the
  event row keeps the answer it was given, no run ids, for redeliveries);
- ``coalesce``: held as ``buffered``; at unpause one run starts per trigger,
  with the latest event, whose trigger params are rendered again with
  ``meta.coalesced`` = how many earlier events it stands for (those are marked
  ``coalesced`` with the run's id);
- ``drop``: held as ``dropped`` with the reason; nothing ever starts.

Concurrency: intake takes a shared transaction lock per workflow before it
reads the pauses; pausing and unpausing take it exclusively. An unpause thus
waits for intake transactions that saw the workflow paused (and buffers what
they committed), and intake transactions that come later wait for the unpause
and then start their runs themselves: no event is stranded or started twice.

Every pause and unpause is audited in its own transaction. Pausing a paused
workflow (or unpausing one that is not) changes nothing and records nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from orchestrator import audit
from orchestrator.engine import Engine, RunRequest
from orchestrator.errors import OperationRefusedError, UnknownWorkflowError
from orchestrator.spec import OnPause
from orchestrator.store import SQL

if TYPE_CHECKING:
    from orchestrator.intake import Accepted, Event

log = logging.getLogger(__name__)

__all__ = [
    "HeldCounts",
    "Pause",
    "Unpaused",
    "held_counts",
    "pause_workflow",
    "paused_among",
    "pauses",
    "record_held",
    "split_held",
    "unpause_workflow",
]

#: How many held events one statement of an unpause starts runs for.
CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Pause:
    """A paused workflow: since when, by whom and why."""

    workflow: str
    paused_at: datetime
    actor: str
    reason: str
    hold_running: bool


@dataclass(slots=True)
class Unpaused:
    """What an unpause did."""

    workflow: str
    run_ids: list[int] = field(default_factory=list)
    """Runs started for held events, in arrival order of their (latest) events."""
    coalesced: int = 0
    """Held events folded into the run of a later event of the same trigger."""
    changed: bool = True
    """False when the workflow was not paused (nothing done, nothing recorded)."""


@dataclass(frozen=True, slots=True)
class HeldCounts:
    buffered: int = 0
    dropped: int = 0


async def paused_among(conn: asyncpg.Connection, names: Iterable[str]) -> dict[str, str]:
    """The paused workflows among ``names``, each with the version its new runs
    start with. Call it in the transaction that would start their runs: it
    holds the shared pause lock of each name until that transaction ends."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    return {r["workflow"]: r["version"] for r in await conn.fetch(SQL.paused_among, wanted)}


async def pauses(conn: asyncpg.Connection, names: Sequence[str] | None = None) -> dict[str, Pause]:
    """The pauses of ``names`` (None: every paused workflow); a plain read, no lock."""
    rows = await conn.fetch(SQL.pauses, None if names is None else list(names))
    return {r["workflow"]: Pause(**dict(r)) for r in rows}


async def held_counts(
    conn: asyncpg.Connection, names: Sequence[str] | None = None
) -> dict[str, HeldCounts]:
    """Buffered and dropped events per workflow."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(SQL.held_counts, None if names is None else list(names)):
        found[r["workflow"]][r["state"]] = r["n"]
    return {name: HeldCounts(**counts) for name, counts in found.items()}


async def _require_workflow(conn: asyncpg.Connection, workflow: str) -> None:
    if not await conn.fetch(SQL.current_versions, [workflow]):
        known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
        raise UnknownWorkflowError(workflow, known)


async def pause_workflow(
    engine: Engine,
    workflow: str,
    *,
    actor: str,
    reason: str = "",
    hold_running: bool = False,
) -> bool:
    """Pause ``workflow``: from the commit on, it starts no new run from any
    source. With ``hold_running``, the tasks of its runs in flight are held
    too (:func:`orchestrator.operations.pause_task` for every task). Returns
    False when it was paused already (nothing changed, nothing recorded).
    Raises :class:`UnknownWorkflowError` for a workflow never registered."""
    async with engine.db.transaction() as conn:
        await _require_workflow(conn, workflow)
        await conn.execute(SQL.lock_pause, workflow)
        if await conn.fetchval(SQL.insert_pause, workflow, actor, reason, hold_running) is None:
            return False
        await audit.record(
            conn,
            audit.Action(
                actor, "pause", reason, workflow=workflow, detail={"hold_running": hold_running}
            ),
        )
    log.info("%s paused by %s%s", workflow, actor, f": {reason}" if reason else "")
    if hold_running:
        await _hold_tasks(engine, workflow, actor=actor, reason=reason, hold=True)
    return True


async def _hold_tasks(
    engine: Engine, workflow: str, *, actor: str, reason: str, hold: bool
) -> None:
    """Hold (or release) every task of the workflow's runs: a hold of its own,
    set or lifted right after the pause, audited like one."""
    from orchestrator import operations  # runs on the engine; imports intake

    try:
        if hold:
            await operations.pause_task(engine, workflow, None, actor=actor, reason=reason)
        else:
            await operations.unpause_task(engine, workflow, None, actor=actor, reason=reason)
    except OperationRefusedError as exc:  # already held (or released) by hand
        log.info("%s: %s", workflow, exc)


async def unpause_workflow(
    engine: Engine, workflow: str, *, actor: str, reason: str = ""
) -> Unpaused:
    """Unpause ``workflow`` and, in the same transaction, start the runs of its
    held events (see the module docs). Intake of the workflow waits for this
    transaction, so the held runs start before any newer event's."""
    async with engine.unit() as (conn, notices):
        await _require_workflow(conn, workflow)
        await conn.execute(SQL.lock_pause, workflow)
        hold_running = await conn.fetchval(SQL.delete_pause, workflow)
        if hold_running is None:
            return Unpaused(workflow, changed=False)
        result = await _release(engine, conn, workflow, actor, notices)
        await audit.record(
            conn,
            audit.Action(
                actor,
                "unpause",
                reason,
                workflow=workflow,
                detail={"runs": len(result.run_ids), "coalesced": result.coalesced},
            ),
        )
    log.info(
        "%s unpaused by %s: %d held runs started (%d coalesced)",
        workflow,
        actor,
        len(result.run_ids),
        result.coalesced,
    )
    if hold_running:
        await _hold_tasks(engine, workflow, actor=actor, reason=reason, hold=False)
    return result


@dataclass(slots=True)
class _Held:
    id: int
    event_id: int
    trigger_key: str
    params: dict[str, Any]
    logical_date: datetime | None
    interval_end: datetime | None
    policy: str


async def _release(
    engine: Engine, conn: asyncpg.Connection, workflow: str, actor: str, notices: Any
) -> Unpaused:
    rows = await conn.fetch(SQL.buffered_events, workflow)
    held = [
        _Held(
            r["id"],
            r["event_id"],
            r["trigger_key"],
            orjson.loads(r["params"]),
            r["logical_date"],
            r["interval_end"],
            r["policy"],
        )
        for r in rows
    ]
    result = Unpaused(workflow)
    if not held:
        return result
    # What to start: each buffered event, or per trigger only the latest one of
    # those held under coalesce (the others name the run that stands for them).
    starts: list[_Held] = []
    folded: dict[int, list[int]] = {}
    latest: dict[str, _Held] = {}
    for h in held:
        if h.policy == OnPause.COALESCE:
            previous = latest.get(h.trigger_key)
            if previous is not None:
                folded[h.id] = [*folded.pop(previous.id, []), previous.id]
            latest[h.trigger_key] = h
        else:
            starts.append(h)
    if latest:
        current = await conn.fetchval(SQL.current_versions_one, workflow)
        spec = (await engine.compiled_workflow(current, conn)).spec
        events = {
            r["id"]: r
            for r in await conn.fetch(SQL.coalesced_events, [h.event_id for h in latest.values()])
        }
        for h in latest.values():
            h.params = _coalesced_params(spec, h, events[h.event_id], len(folded.get(h.id, [])))
        starts = sorted(starts + list(latest.values()), key=lambda h: h.id)
    ids_of: list[int] = []
    states: list[str] = []
    run_of: list[int] = []
    for i in range(0, len(starts), CHUNK):
        chunk = starts[i : i + CHUNK]
        run_ids = await engine.allocate_run_ids(conn, len(chunk))
        requests = [
            RunRequest(workflow, h.params, h.logical_date, h.interval_end, h.event_id)
            for h in chunk
        ]
        await engine.create_runs_in(conn, requests, run_ids, actor=actor, notices=notices)
        for h, run_id in zip(chunk, run_ids, strict=True):
            ids_of.append(h.id)
            states.append("started")
            run_of.append(run_id)
            for other in folded.get(h.id, ()):
                ids_of.append(other)
                states.append("coalesced")
                run_of.append(run_id)
        result.run_ids.extend(run_ids)
    result.coalesced = sum(len(v) for v in folded.values())
    await conn.execute(SQL.release_held, ids_of, states, run_of)
    return result


def _coalesced_params(spec: Any, held: _Held, row: asyncpg.Record, others: int) -> dict[str, Any]:
    """The run params of the latest event of a coalesced trigger, rendered
    again with ``meta.coalesced`` = ``others``; the params held at intake when
    the trigger is no longer there (the workflow changed while paused)."""
    from orchestrator.intake import Event, Route, trigger_at

    trigger = trigger_at(spec, held.trigger_key)
    if trigger is None:
        return held.params
    meta = orjson.loads(row["meta"]) if row["meta"] else {}
    event = Event(
        source=row["source"],
        channel=row["channel"],
        dedup_key=row["dedup_key"],
        payload=orjson.loads(row["payload"]) if row["payload"] is not None else None,
        headers=orjson.loads(row["headers"]) if row["headers"] else {},
        meta={**meta, "coalesced": others},
    )
    try:
        return Route(spec.name, trigger, spec.param_schema).params_for(event)
    except Exception as exc:
        log.warning("%s: coalesced params not rendered again (%s); held ones kept", spec.name, exc)
        return held.params


# -- intake of paused workflows (called by orchestrator.intake) ------------------


def split_held(
    batch: Sequence[Event],
    planned: Sequence[tuple[list[RunRequest], list[tuple[str, str]]]],
    paused: Mapping[str, OnPause],
) -> tuple[
    list[tuple[list[RunRequest], list[tuple[str, str]]]], list[list[tuple[RunRequest, str]]]
]:
    """Split each event's run requests into those that start now and those a
    paused workflow holds, each with the trigger that asked for it."""
    starting: list[tuple[list[RunRequest], list[tuple[str, str]]]] = []
    held: list[list[tuple[RunRequest, str]]] = []
    for event, (requests, reasons) in zip(batch, planned, strict=True):
        now = [r for r in requests if r.workflow not in paused]
        later = [(r, r.trigger or event.source) for r in requests if r.workflow in paused]
        starting.append((now, reasons))
        held.append(later)
    return starting, held


async def record_held(
    conn: asyncpg.Connection,
    batch: Sequence[Event],
    held: Sequence[Sequence[tuple[RunRequest, str]]],
    inserted: Mapping[str, int],
    paused: Mapping[str, OnPause],
    answers: dict[str, Accepted],
) -> None:
    """Record the held runs of the batch's new events (a redelivered event
    was held, or started, when it first came)."""
    rows: list[tuple[str, int, str, str, str, str, Any, Any, str]] = []
    for event, requests in zip(batch, held, strict=True):
        event_id = inserted.get(event.dedup_key)
        if event_id is None or not requests:
            continue
        for req, trigger in requests:
            policy = paused[req.workflow]
            dropped = policy == OnPause.DROP
            rows.append(
                (
                    req.workflow,
                    event_id,
                    trigger,
                    policy.value,
                    "dropped" if dropped else "buffered",
                    orjson.dumps(req.params).decode(),
                    req.logical_date,
                    req.interval_end,
                    f"workflow {req.workflow!r} is paused (on_pause: drop)" if dropped else "",
                )
            )
        answers[event.dedup_key].paused.extend(dict.fromkeys(r.workflow for r, _ in requests))
    if rows:
        await conn.execute(
            SQL.insert_held_events, *(list(column) for column in zip(*rows, strict=True))
        )

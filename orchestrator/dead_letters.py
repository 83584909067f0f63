"""Dead letters: listing intake's refused events, and sending them through
routing again (redrive).

A dead letter is an event, or one workflow's use of it, that intake could not
use: a message that is not JSON, a filter or params mapping that failed,
params a workflow refused. Once the cause is fixed (usually: a corrected
workflow was deployed), :func:`redrive` routes it again with the workflows
registered in the database now, through the same :class:`~orchestrator.intake.Router`
a running orchestrator builds:

- a letter whose event was recorded (a routing failure) starts the runs of
  the workflow it failed for, and the event names them too, so a replayed
  delivery answers with them;
- a letter the source refused before it became an event (e.g. not JSON) is
  recorded as an event with its original dedup key, then routed as any event.

Each letter is redriven in its own transaction, locked first, so redriving
twice or concurrently starts its runs once. The letter is marked redriven with
the event and runs it started, and one audit entry (``redrive``) is written in
the same transaction. A letter that still cannot be used stays, with the new
error and one more attempt counted (and its audit entry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator import audit
from orchestrator.engine import Engine, RunRequest
from orchestrator.errors import OrchestratorError
from orchestrator.intake import Event, Intake, Route, Router
from orchestrator.notices import Notices
from orchestrator.routing import Unmatched
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL

__all__ = [
    "DeadLetterRecord",
    "Redriven",
    "UnknownDeadLetterError",
    "dead_letter",
    "dead_letters",
    "mask_headers",
    "pending_ids",
    "redrive",
    "registered_router",
]

#: Header names whose values are never shown: signatures, tokens, secrets.
_SECRET_HEADER = re.compile(
    r"signature|secret|token|authorization|password|passwd|cookie|api[-_]?key|credential",
    re.IGNORECASE,
)
MASK = "***"


class UnknownDeadLetterError(OrchestratorError):
    """No dead letter has this id (it may have been pruned)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)
        names = ", ".join(str(i) for i in ids)
        super().__init__(
            f"no dead letter {names}: unknown id{'s' if len(ids) > 1 else ''} "
            "(list them with `orchestrator dead-letters`)"
        )


def mask_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` with the values of signature, token and secret headers masked."""
    return {k: MASK if _SECRET_HEADER.search(k) else v for k, v in headers.items()}


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    id: int
    source: str
    channel: str
    dedup_key: str
    workflow: str | None
    reason: str
    received_at: datetime
    event_id: int | None
    attempts: int
    last_attempt_at: datetime | None
    redriven_at: datetime | None
    redriven_by: str | None
    redrive_event_id: int | None
    redrive_run_ids: list[int]
    payload: Any = None
    """The event's payload; for a letter the source refused, its raw text."""
    raw: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    """Masked: signature, token and secret headers show ``***``."""
    meta: dict[str, Any] = field(default_factory=dict)

    def as_json(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "channel": self.channel,
            "dedup_key": self.dedup_key,
            "workflow": self.workflow,
            "error": self.reason,
            "received_at": self.received_at.isoformat(),
            "event_id": self.event_id,
            "attempts": self.attempts,
            "last_attempt_at": _iso(self.last_attempt_at),
            "redriven_at": _iso(self.redriven_at),
            "redriven_by": self.redriven_by,
            "redrive_event_id": self.redrive_event_id,
            "redrive_run_ids": self.redrive_run_ids,
        }
        if full:
            out.update(payload=self.payload, raw=self.raw, headers=self.headers, meta=self.meta)
        return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _record(row: asyncpg.Record, *, full: bool) -> DeadLetterRecord:
    base = {
        k: row[k]
        for k in (
            "id",
            "source",
            "channel",
            "dedup_key",
            "workflow",
            "reason",
            "received_at",
            "event_id",
            "attempts",
            "last_attempt_at",
            "redriven_at",
            "redriven_by",
            "redrive_event_id",
        )
    }
    base["redrive_run_ids"] = list(row["redrive_run_ids"])
    if not full:
        return DeadLetterRecord(**base)
    recorded = row["payload"] is not None or row["event_headers"] is not None
    headers = orjson.loads(row["event_headers"] if recorded else row["headers"])
    meta = orjson.loads(row["event_meta"] if recorded else row["meta"])
    payload = orjson.loads(row["payload"]) if row["payload"] is not None else row["raw"]
    return DeadLetterRecord(
        **base, payload=payload, raw=row["raw"], headers=mask_headers(headers), meta=meta
    )


async def dead_letters(
    engine: Engine,
    *,
    source: str | None = None,
    workflow: str | None = None,
    before: int | None = None,
    limit: int = 100,
    redriven: bool | None = None,
) -> list[DeadLetterRecord]:
    """Dead letters, newest first, only those ``redriven`` (or not) when it is
    given; ``before`` (an id) pages back."""
    async with engine.db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_dead_letters, source, workflow, before, limit, redriven)
    return [_record(r, full=False) for r in rows]


async def dead_letter(engine: Engine, letter_id: int) -> DeadLetterRecord:
    """One dead letter with its payload, (masked) headers and meta."""
    async with engine.db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.dead_letter, letter_id)
    if row is None:
        raise UnknownDeadLetterError([letter_id])
    return _record(row, full=True)


async def pending_ids(engine: Engine, *, workflow: str | None = None) -> list[int]:
    """Ids of the dead letters not redriven yet, oldest first."""
    async with engine.db.pool.acquire() as conn:
        return [r["id"] for r in await conn.fetch(SQL.pending_dead_letter_ids, workflow)]


async def registered_specs(engine: Engine) -> list[WorkflowSpec]:
    """The spec new runs of each registered workflow start with."""
    async with engine.db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_workflows)
    return [(await engine.compiled_workflow(r["current_version"])).spec for r in rows]


async def registered_router(engine: Engine) -> Router:
    """The router a running orchestrator builds, from the workflows as
    registered in the database now."""
    return Router(await registered_specs(engine))


@dataclass(frozen=True, slots=True)
class Redriven:
    """What redriving one dead letter did."""

    id: int
    ok: bool
    """True when the letter is now redriven (by this call or an earlier one)."""
    message: str
    event_id: int | None = None
    run_ids: list[int] = field(default_factory=list)
    already: bool = False
    """It had been redriven before: nothing was started now."""

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "redriven": self.ok,
            "already": self.already,
            "event_id": self.event_id,
            "run_ids": self.run_ids,
            "message": self.message,
        }


class _StillRefused(OrchestratorError):
    """Routing the letter again failed: it stays a dead letter."""


async def redrive(
    engine: Engine,
    ids: Iterable[int],
    *,
    actor: str,
    reason: str = "",
    router: Router | None = None,
) -> list[Redriven]:
    """Route the dead letters ``ids`` again (see the module docs); unknown ids
    raise :class:`UnknownDeadLetterError` before anything is done."""
    wanted = list(dict.fromkeys(ids))
    async with engine.db.pool.acquire() as conn:
        found = {r["id"] for r in await conn.fetch(SQL.dead_letters_exist, wanted)}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise UnknownDeadLetterError(missing)
    router = router or await registered_router(engine)
    intake = Intake(engine, router)
    return [await _redrive_one(intake, i, actor=actor, reason=reason) for i in wanted]


async def _redrive_one(intake: Intake, letter_id: int, *, actor: str, reason: str) -> Redriven:
    engine = intake.engine
    async with engine.db.transaction() as conn:
        locked = await conn.fetchrow(SQL.lock_dead_letter, letter_id)
        if locked is None:
            return Redriven(letter_id, False, "pruned meanwhile: nothing to redrive")
        row = await conn.fetchrow(SQL.dead_letter, letter_id)
        assert row is not None
        if row["redriven_at"] is not None:
            return Redriven(
                letter_id,
                True,
                f"already redriven by {row['redriven_by']} at {row['redriven_at'].isoformat()}"
                f" (runs {list(row['redrive_run_ids']) or 'none'}): nothing started",
                row["redrive_event_id"],
                list(row["redrive_run_ids"]),
                already=True,
            )
        notices = Notices()
        try:
            async with conn.transaction():  # a savepoint: a refusal undoes only this
                event_id, run_ids = await _route_again(intake, conn, row, actor, notices)
        except _StillRefused as exc:
            attempts = await conn.fetchval(SQL.dead_letter_failed_again, letter_id, str(exc))
            await audit.record(
                conn,
                audit.Action(
                    actor,
                    "redrive",
                    reason,
                    workflow=row["workflow"],
                    detail={
                        "dead_letter": letter_id,
                        "outcome": "still refused",
                        "error": str(exc),
                        "attempts": attempts,
                    },
                ),
            )
            return Redriven(letter_id, False, f"still refused (attempt {attempts}): {exc}")
        await conn.fetchval(SQL.dead_letter_redriven, letter_id, actor, event_id, run_ids)
        workflows = await conn.fetch(SQL.workflows_of_runs, run_ids) if run_ids else []
        names = sorted({r["workflow"] for r in workflows})
        await audit.record(
            conn,
            audit.Action(
                actor,
                "redrive",
                reason,
                workflow=row["workflow"] or (names[0] if len(names) == 1 else None),
                run_id=run_ids[0] if len(run_ids) == 1 else None,
                detail={
                    "dead_letter": letter_id,
                    "outcome": "redriven",
                    "event_id": event_id,
                    "run_ids": run_ids,
                    "source": row["source"],
                    "channel": row["channel"],
                },
            ),
        )
        await notices.send(conn)
    started = f"started run{'s' if len(run_ids) != 1 else ''} {', '.join(map(str, run_ids))}"
    return Redriven(
        letter_id,
        True,
        f"redriven as event {event_id}: {started if run_ids else 'it started no run'}",
        event_id,
        run_ids,
    )


async def _route_again(
    intake: Intake,
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    actor: str,
    notices: Notices,
) -> tuple[int, list[int]]:
    if row["event_id"] is None:
        return await _record_refused_event(intake, conn, row, actor, notices)
    event = Event(
        source=row["source"],
        channel=row["channel"],
        dedup_key=row["dedup_key"],
        payload=orjson.loads(row["payload"]) if row["payload"] is not None else None,
        headers=orjson.loads(row["event_headers"]),
        meta=orjson.loads(row["event_meta"]),
    )
    workflow: str | None = row["workflow"]
    routes = intake.router.routes(event)
    if workflow is not None:
        routes = [r for r in routes if r.workflow == workflow]
    else:
        started = await conn.fetch(SQL.workflows_of_runs, list(row["event_run_ids"]))
        done = {r["workflow"] for r in started}
        routes = [r for r in routes if r.workflow not in done]
    if not routes:
        whose = f"workflow {workflow!r} has" if workflow else "no other workflow has"
        if workflow and not await conn.fetch(SQL.current_versions, [workflow]):
            whose = f"workflow {workflow!r} is not registered, so it has"
        raise _StillRefused(f"{whose} no trigger for {event.source} {event.channel!r} now")
    requests = [_request(route, event, row["event_id"]) for route in routes]
    paused = await _paused(conn, [r.workflow for r in requests])
    if paused:
        raise _StillRefused(
            f"workflow {', '.join(map(repr, paused))} is paused: it starts no run until "
            "unpaused; redrive it then"
        )
    ids = await intake.engine.allocate_run_ids(conn, len(requests))
    try:
        await intake.engine.create_runs_in(conn, requests, ids, actor=actor, notices=notices)
    except OrchestratorError as exc:
        raise _StillRefused(str(exc)) from None
    await conn.execute(SQL.add_event_runs, row["event_id"], ids)
    return row["event_id"], ids


async def _paused(conn: asyncpg.Connection, names: list[str]) -> list[str]:
    """The paused workflows among ``names``, where workflows can be paused (a
    letter recorded as an event goes through intake, which holds it per the
    workflow's ``on_pause``; one redriven for its workflow is refused)."""
    try:
        from orchestrator.pausing import (  # type: ignore[import-not-found,unused-ignore]
            paused_among,
        )
    except ImportError:
        return []
    found: dict[str, str] = await paused_among(conn, names)
    return sorted(found)


def _request(route: Route, event: Event, event_id: int) -> RunRequest:
    try:
        params = route.params_for(event)
    except Unmatched:
        raise _StillRefused(
            f"the filter of {route.workflow!r}'s trigger ({route.trigger.filter}) "
            "does not match this event now"
        ) from None
    except ValueError as exc:
        raise _StillRefused(f"{route.workflow}: {exc}") from None
    return RunRequest(route.workflow, params, None, None, event_id)


async def _record_refused_event(
    intake: Intake,
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    actor: str,
    notices: Notices,
) -> tuple[int, list[int]]:
    """A letter the source refused before it was an event: its raw text as
    the event's payload, recorded with the original dedup key."""
    if row["source"] == "schedule":
        raise _StillRefused(
            "a schedule's dead letter is not an event to route: once its trigger's params "
            f"are fixed, backfill its date ({orjson.loads(row['meta']).get('logical_date')})"
        )
    raw: str | None = row["raw"]
    if raw is None:
        raise _StillRefused(f"the source kept no body to send again ({row['reason']})")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _StillRefused(f"the body kept is still not JSON: {exc}") from None
    event = Event(
        source=row["source"],
        channel=row["channel"],
        dedup_key=row["dedup_key"],
        payload=payload,
        headers=orjson.loads(row["headers"]),
        meta=orjson.loads(row["meta"]),
        actor=actor,
    )
    [answer] = await intake.ingest_in(conn, [event], actor=actor, notices=notices)
    if answer.duplicate:  # recorded meanwhile (e.g. delivered again once fixed)
        return answer.event_id, []
    if answer.dead_letters and not answer.run_ids:
        raise _StillRefused("; ".join(answer.dead_letters))
    return answer.event_id, list(answer.run_ids)

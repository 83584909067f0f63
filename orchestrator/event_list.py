"""Intake's events as an operator sees them (``orchestrator events``, ``GET
/api/v1/events``): newest first, with what each one did.

An event's ``status`` is what became of it, worst first when several
workflows saw it:

- ``dead_lettered``: a workflow could not use it (a filter or params mapping
  failed, params refused) and it was not redriven;
- ``dropped``: a paused workflow with ``on_pause: drop`` dropped it;
- ``buffered``: a paused workflow holds it until it is unpaused;
- ``started``: it started runs (``run_ids``), at once or at an unpause;
- ``recorded``: stored, it started nothing (it matched no trigger, or it
  ended a wait).

A redelivery (the same dedup key offered again) starts nothing and is not a
row of its own: the stored event counts it (``redeliveries``).

Pages are keyed by id (``before``): events that arrive meanwhile have higher
ids, so they never shift the pages after the first. Headers that carry
credentials (authorization, signatures, cookies, tokens) are masked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from orchestrator.dead_letters import mask_headers
from orchestrator.store import SQL, Database

__all__ = ["STATUSES", "EventRecord", "HeldBy", "RefusedBy", "event", "event_json", "events"]

Status = Literal["dead_lettered", "dropped", "buffered", "started", "recorded"]
STATUSES: tuple[str, ...] = ("dead_lettered", "dropped", "buffered", "started", "recorded")


@dataclass(frozen=True, slots=True)
class HeldBy:
    """A paused workflow's hold of the event."""

    workflow: str
    policy: Literal["buffer", "coalesce", "drop"]
    state: Literal["buffered", "started", "coalesced", "dropped"]
    reason: str
    run_id: int | None


@dataclass(frozen=True, slots=True)
class RefusedBy:
    """A dead letter of the event: a workflow that could not use it."""

    dead_letter_id: int
    workflow: str | None
    error: str
    redriven: bool


@dataclass(slots=True)
class EventRecord:
    id: int
    source: str
    channel: str
    """Topic, hook name, file path, or workflow name."""
    dedup_key: str
    actor: str
    received_at: datetime
    status: Status
    reason: str | None
    """Why it is dead-lettered, dropped or buffered (None otherwise)."""
    run_ids: list[int]
    redeliveries: int
    """How often the same dedup key was offered again (each started nothing)."""
    last_redelivered_at: datetime | None
    held: list[HeldBy] = field(default_factory=list)
    dead_letters: list[RefusedBy] = field(default_factory=list)
    payload: Any = None
    """Only when read one at a time (:func:`event`)."""
    headers: dict[str, Any] | None = None
    """Only when read one at a time; credentials masked."""
    meta: dict[str, Any] | None = None


_BIGINT_MAX = 2**63 - 1

#: What only an event read one at a time has.
_CONTENT = ("payload", "headers", "meta")


def event_json(record: EventRecord, *, full: bool = False) -> dict[str, Any]:
    """The event as the API answers it (with its content when ``full``)."""
    out = asdict(record)
    if not full:
        for name in _CONTENT:
            del out[name]
    return out


async def events(
    db: Database,
    *,
    source: str | None = None,
    workflow: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    redelivered: bool | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[EventRecord]:
    """Events newest first; ``before`` (an id) pages back."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            SQL.list_events, source, workflow, status, since, before, limit, redelivered
        )
        ids = [r["id"] for r in rows]
        held = await conn.fetch(SQL.held_of_events, ids) if ids else []
        refused = await conn.fetch(SQL.dead_letters_of_events, ids) if ids else []
    holds: dict[int, list[HeldBy]] = {}
    for h in held:
        holds.setdefault(h["event_id"], []).append(
            HeldBy(h["workflow"], h["policy"], h["state"], h["reason"], h["run_id"])
        )
    letters: dict[int, list[RefusedBy]] = {}
    for d in refused:
        letters.setdefault(d["event_id"], []).append(
            RefusedBy(d["id"], d["workflow"], d["reason"], d["redriven_at"] is not None)
        )
    return [_record(r, holds.get(r["id"], []), letters.get(r["id"], [])) for r in rows]


def _record(row: Any, held: list[HeldBy], letters: list[RefusedBy]) -> EventRecord:
    return EventRecord(
        id=row["id"],
        source=row["source"],
        channel=row["channel"],
        dedup_key=row["dedup_key"],
        actor=row["actor"],
        received_at=row["received_at"],
        status=row["status"],
        reason=_reason(row["status"], held, letters),
        run_ids=list(row["run_ids"]),
        redeliveries=row["redeliveries"],
        last_redelivered_at=row["last_redelivered_at"],
        held=held,
        dead_letters=letters,
    )


def _reason(status: str, held: list[HeldBy], letters: list[RefusedBy]) -> str | None:
    if status == "dead_lettered":
        return "; ".join(
            f"{d.workflow or 'any workflow'}: {d.error}" for d in letters if not d.redriven
        )
    if status == "dropped":
        return "; ".join(h.reason for h in held if h.state == "dropped")
    if status == "buffered":
        waiting = sorted({h.workflow for h in held if h.state == "buffered"})
        return f"held until {', '.join(waiting)} {'is' if len(waiting) == 1 else 'are'} unpaused"
    return None


async def event(db: Database, event_id: int) -> EventRecord | None:
    """One event with its payload, (masked) headers and meta; None if there is none."""
    if event_id >= _BIGINT_MAX:  # no id is that high, and the page below needs id + 1
        return None
    found = await events(db, before=event_id + 1, limit=1)
    if not found or found[0].id != event_id:
        return None
    record = found[0]
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.event_content, event_id)
    if row is None:  # pruned meanwhile
        return None
    record.payload = orjson.loads(row["payload"]) if row["payload"] is not None else None
    record.headers = mask_headers(orjson.loads(row["headers"]))
    record.meta = orjson.loads(row["meta"])
    return record

"""Durable, exactly-once event intake shared by every source.

A source (Kafka, webhook, landing zone, schedule, manual) turns what it
receives into :class:`Event` values with a dedup key derived from the source
(Kafka log/partition/offset, delivery id, path+size+mtime+hash, logical date) and
calls :meth:`Intake.ingest` with a batch. In one transaction, the batch's new
events are written (``ON CONFLICT (dedup_key) DO NOTHING``), routed to every
matching workflow trigger, and their runs created; redelivered events are
answered from the stored row and start nothing. A source acknowledges (HTTP
202, Kafka offset commit, file taken) only after ``ingest`` returns.

Params are checked against what each workflow declares
(:mod:`orchestrator.params`) before anything is written: an event whose
params one workflow refuses is a dead letter for that workflow only (the
others it matches still start), except a manual event, whose caller gets the
:class:`~orchestrator.errors.ParamsError` and nothing is recorded.

A paused workflow starts nothing here: the event is recorded all the same and
its runs are held per the workflow's ``on_pause`` (:mod:`orchestrator.pausing`),
decided under the workflow's shared pause lock in this same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator.deferral import Resolution
from orchestrator.engine import Engine, RunRequest
from orchestrator.errors import ParamsError
from orchestrator.metrics import METRICS
from orchestrator.notices import Notices
from orchestrator.params import ParamsSchema
from orchestrator.pausing import paused_among, record_held, split_held
from orchestrator.routing import (
    Route as Route,
    Router as Router,
    Unmatched,
    scope_of as scope_of,
    search as search,
    trigger_at as trigger_at,
    trigger_key_of as trigger_key_of,
)
from orchestrator.spec import OnPause
from orchestrator.store import SQL

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Event:
    """One thing that happened, as a source hands it over."""

    source: str
    """``kafka``, ``webhook``, ``file``, ``schedule``, ``manual``."""
    channel: str
    """Topic, hook name, relative file path, or workflow name."""
    dedup_key: str
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    actor: str = ""
    workflow: str | None = None
    """Schedule and manual events name their workflow instead of being routed."""
    params: Mapping[str, Any] | None = None
    """Manual events: the params as given (no mapping)."""
    logical_date: datetime | None = None
    interval_end: datetime | None = None
    keys: list[str] = field(default_factory=list)
    """Correlation keys the source already knows (e.g. a callback token's)."""
    fresh_key: bool = False
    """The source made the dedup key up just now (a manual trigger without an
    idempotency key): no stored event can have it, so it is not looked up."""
    raw: bytes | None = None
    """The payload's JSON text as received, when the source has it: stored as
    sent (exact numbers included) instead of encoding ``payload`` again."""


@dataclass(slots=True)
class DeadLetter:
    """An event, or one workflow's use of it, that could not be used."""

    source: str
    channel: str
    dedup_key: str
    reason: str
    raw: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    workflow: str | None = None


@dataclass(slots=True)
class Accepted:
    """What a source tells its caller: the stored event and the runs it started."""

    event_id: int
    run_ids: list[int]
    duplicate: bool
    """True when the dedup key was seen before: nothing new was started."""
    dead_letters: list[str] = field(default_factory=list)
    """Reasons the event could not start some workflow (filter or mapping errors)."""
    paused: list[str] = field(default_factory=list)
    """Paused workflows that held the event (buffered or dropped it) instead
    of starting a run (see :mod:`orchestrator.pausing`)."""


class Intake:
    def __init__(self, engine: Engine, router: Router | None = None) -> None:
        self.engine = engine
        self.router = router or Router()

    def use_router(self, router: Router) -> None:
        self.router = router

    async def ingest(
        self,
        events: Sequence[Event],
        *,
        dead_letters: Sequence[DeadLetter] = (),
        actor: str = "intake",
    ) -> list[Accepted]:
        """Store, route and start runs for ``events`` in one transaction; the
        results are in the same order as ``events``. ``dead_letters`` (events
        a source could not even parse) are stored in the same commit. Runs it
        starts are handed to this process's worker, if it has one (engine.unit)."""
        async with self.engine.unit() as (conn, notices):
            return await self.ingest_in(
                conn, events, dead_letters=dead_letters, actor=actor, notices=notices
            )

    async def ingest_in(
        self,
        conn: asyncpg.Connection,
        events: Sequence[Event],
        *,
        dead_letters: Sequence[DeadLetter] = (),
        actor: str = "intake",
        notices: Notices | None = None,
    ) -> list[Accepted]:
        """:meth:`ingest` in the caller's transaction. Its notifications go
        into ``notices`` for the caller to send at the end of its unit of
        work, or, without one, are sent before this returns."""
        own = notices is None
        notices = Notices() if notices is None else notices
        letters = list(dead_letters)
        # A key repeated inside the batch is one event: keep its first occurrence.
        unique: dict[str, Event] = {}
        for event in events:
            unique.setdefault(event.dedup_key, event)
        batch = list(unique.values())
        known = await self._known(conn, batch)
        if known:
            batch = [e for e in batch if e.dedup_key not in known]
        # Route first, so run ids can be allocated and written with the event
        # row itself; a redelivered event only wastes the ids it was given.
        named = {e.workflow for e in batch if e.workflow is not None}
        schemas = await self.registered_schemas(conn, named) if named else {}
        planned: list[tuple[list[RunRequest], list[tuple[str, str]]]] = [
            self._plan(e, schemas) for e in batch
        ]
        held: list[list[tuple[RunRequest, str]]] = []
        paused: dict[str, OnPause] = {}
        if any(requests for requests, _ in planned):
            paused = await self._paused(conn, planned)
        if paused:
            planned, held = split_held(batch, planned, paused)
        total = sum(len(requests) for requests, _ in planned)
        ids = iter(await self.engine.allocate_run_ids(conn, total) if total else [])
        run_ids = [[next(ids) for _ in requests] for requests, _ in planned]
        rows = await conn.fetch(SQL.insert_events, _events_document(batch, run_ids, actor))
        inserted = {r["dedup_key"]: r["id"] for r in rows}
        existing: dict[str, asyncpg.Record] = {}
        missing = [e.dedup_key for e in batch if e.dedup_key not in inserted]
        if missing:
            existing = {r["dedup_key"]: r for r in await conn.fetch(SQL.events_by_key, missing)}
        new_requests: list[RunRequest] = []
        new_ids: list[int] = []
        answers = {k: Accepted(r["id"], list(r["run_ids"]), True) for k, r in known.items()}
        for event, (requests, reasons), rids in zip(batch, planned, run_ids, strict=True):
            key = event.dedup_key
            event_id = inserted.get(key)
            if event_id is None:
                row = existing[key]
                answers[key] = Accepted(row["id"], list(row["run_ids"]), True)
                continue
            if requests:
                new_requests += [_with_event(r, event_id, event.actor or None) for r in requests]
                new_ids += rids
            if reasons:
                letters.extend(
                    DeadLetter(
                        event.source,
                        event.channel,
                        key,
                        reason,
                        headers=event.headers,
                        meta=event.meta,
                        workflow=workflow,
                    )
                    for workflow, reason in reasons
                )
            answers[key] = Accepted(event_id, rids, False, [r for _, r in reasons])
        if new_requests:
            await self.engine.create_runs_in(
                conn, new_requests, new_ids, actor=actor, notices=notices
            )
        if held:
            await record_held(conn, batch, held, inserted, paused, answers)
        if letters:
            await self._dead_letters(conn, letters, inserted)
        fresh = [e for e in batch if e.dedup_key in inserted]
        if fresh:
            await self._wake_waits(conn, fresh, inserted, actor, notices)
        offered_again = sorted(a.event_id for a in answers.values() if a.duplicate)
        if offered_again:  # last: see the query
            await conn.execute(SQL.count_redeliveries, offered_again)
        if own:
            await notices.send(conn)
        results = []
        first_seen: set[str] = set()
        for event in events:
            answer = answers[event.dedup_key]
            if event.dedup_key in first_seen and not answer.duplicate:
                answer = Accepted(answer.event_id, answer.run_ids, True)
            first_seen.add(event.dedup_key)
            results.append(answer)
        METRICS.events_taken_in(zip(events, results, strict=True))
        return results

    async def _paused(
        self,
        conn: asyncpg.Connection,
        planned: Sequence[tuple[list[RunRequest], list[tuple[str, str]]]],
    ) -> dict[str, OnPause]:
        """The paused workflows among those the batch would start, with their
        ``on_pause`` policies (one query; it holds their shared pause locks)."""
        names = {req.workflow for requests, _ in planned for req in requests}
        found = await paused_among(conn, names)
        policies: dict[str, OnPause] = {}
        for name, version in found.items():
            compiled = await self.engine.compiled_workflow(version, conn)
            policies[name] = compiled.spec.on_pause
        return policies

    async def _known(
        self, conn: asyncpg.Connection, batch: Sequence[Event]
    ) -> dict[str, asyncpg.Record]:
        """Stored events among those of sources looked up first, by key."""
        first = self.router.looked_up_first
        keys = [e.dedup_key for e in batch if e.source in first and not e.fresh_key]
        if not keys:
            return {}
        return {r["dedup_key"]: r for r in await conn.fetch(SQL.events_by_key, keys)}

    async def _wake_waits(
        self,
        conn: asyncpg.Connection,
        events: Sequence[Event],
        event_ids: Mapping[str, int],
        actor: str,
        notices: Notices,
    ) -> None:
        """Record the events' correlation keys and end the waits they satisfy,
        in this same transaction (so each wait ends once, with its event)."""
        keys: list[str] = []
        key_events: list[int] = []
        by_id: dict[int, Event] = {}
        for event in events:
            event_id = event_ids[event.dedup_key]
            for key in self.router.event_keys(event):
                keys.append(key)
                key_events.append(event_id)
                by_id[event_id] = event
        if not keys:
            return
        await conn.execute(SQL.lock_keys, keys)
        # A wait two events match ends with the later one (batch order).
        matches = {
            r["id"]: (r["run_id"], r["event_id"])
            for r in await conn.fetch(SQL.record_event_keys, keys, key_events)
        }
        by_pattern = [e for e in events if e.source in self.router.pattern_waits]
        if by_pattern:
            rows = await conn.fetch(
                SQL.waiting_for_paths,
                [e.channel for e in by_pattern],
                [event_ids[e.dedup_key] for e in by_pattern],
            )
            matches.update((r["id"], (r["run_id"], r["event_id"])) for r in rows)
        if not matches:
            return
        resolutions = []
        for deferral_id, (run_id, event_id) in matches.items():
            resolution = _resolution(deferral_id, event_id, by_id[event_id])
            resolution.run_id = run_id
            resolutions.append(resolution)
        await self.engine.resolve_in(conn, resolutions, actor=actor, notices=notices)

    async def registered_schemas(
        self, conn: asyncpg.Connection, names: Iterable[str]
    ) -> dict[str, ParamsSchema | None]:
        """The declared params of the versions new runs of ``names`` start with
        (events that name their workflow are checked against those). Unknown
        names are left out: creating their runs fails with the names known."""
        schemas: dict[str, ParamsSchema | None] = {}
        for row in await conn.fetch(SQL.current_versions, sorted(names)):
            compiled = await self.engine.compiled_workflow(row["current_version"], conn)
            schemas[row["name"]] = compiled.spec.param_schema
        return schemas

    def _plan(
        self, event: Event, schemas: Mapping[str, ParamsSchema | None]
    ) -> tuple[list[RunRequest], list[tuple[str, str]]]:
        """Run requests for an event, and (workflow, reason) for each failure."""
        if event.workflow is not None:
            params = dict(event.params or {})
            schema = schemas.get(event.workflow)
            if schema is not None:
                try:
                    params = schema.check(params, workflow=event.workflow)
                except ParamsError as exc:
                    if event.source == "manual":
                        raise  # the person or program that asked is told
                    return [], [(event.workflow, str(exc))]
            return [RunRequest(event.workflow, params, event.logical_date, event.interval_end)], []
        requests: list[RunRequest] = []
        reasons: list[tuple[str, str]] = []
        for route in self.router.routes(event):
            try:
                params = route.params_for(event)
            except Unmatched:
                continue
            except ValueError as exc:
                reasons.append((route.workflow, str(exc)))
                continue
            requests.append(
                RunRequest(
                    route.workflow,
                    params,
                    event.logical_date,
                    event.interval_end,
                    trigger=route.key,
                )
            )
        return requests, reasons

    @staticmethod
    async def _dead_letters(
        conn: asyncpg.Connection, letters: Sequence[DeadLetter], event_ids: Mapping[str, int]
    ) -> None:
        await conn.execute(
            SQL.insert_dead_letters,
            [d.source for d in letters],
            [d.channel for d in letters],
            [d.dedup_key for d in letters],
            [event_ids.get(d.dedup_key) for d in letters],
            [d.workflow for d in letters],
            [d.reason for d in letters],
            [d.raw for d in letters],
            [orjson.dumps(d.headers).decode() for d in letters],
            [orjson.dumps(d.meta).decode() for d in letters],
        )
        for d in letters:
            log.warning(
                "dead letter from %s %s (%s): %s",
                d.source,
                d.channel,
                d.workflow or "any workflow",
                d.reason,
            )


def _with_event(req: RunRequest, event_id: int, actor: str | None) -> RunRequest:
    # Not dataclasses.replace: this runs for every run an event starts.
    return RunRequest(
        req.workflow, req.params, req.logical_date, req.interval_end, event_id, actor, req.trigger
    )


def _events_document(batch: Sequence[Event], run_ids: Sequence[list[int]], actor: str) -> str:
    """The batch as the one JSON document ``insert_events`` reads."""
    return orjson.dumps(
        [
            [
                e.source,
                e.channel,
                e.dedup_key,
                e.payload if e.raw is None else orjson.Fragment(e.raw),
                e.headers,
                e.meta,
                e.actor or actor,
                "{" + ",".join(map(str, rids)) + "}",
            ]
            for e, rids in zip(batch, run_ids, strict=True)
        ]
    ).decode()


def _resolution(deferral_id: int, event_id: int, event: Event) -> Resolution:
    if event.source == "callback":
        # The caller says how the task ends: {"status": "success"|"failed", ...}.
        body = event.payload if isinstance(event.payload, dict) else {}
        if body.get("status") == "failed":
            return Resolution(
                deferral_id,
                "failed",
                reason=f"callback {event_id}: failed",
                event_id=event_id,
                error=str(body.get("error") or "the callback reported a failure"),
            )
        return Resolution(
            deferral_id,
            "success",
            body.get("output"),
            reason=f"callback {event_id}: success",
            event_id=event_id,
        )
    return Resolution(
        deferral_id,
        "success",
        {"event_id": event_id, "payload": event.payload, "meta": event.meta},
        reason=f"event {event_id} arrived",
        event_id=event_id,
    )

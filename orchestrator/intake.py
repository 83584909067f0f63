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
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg
import jmespath
import orjson
from jmespath.exceptions import JMESPathError

from orchestrator.deferral import Resolution, file_key, kafka_key
from orchestrator.engine import Engine, RunRequest
from orchestrator.errors import ParamsError
from orchestrator.notices import Notices
from orchestrator.params import ParamsSchema
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL
from orchestrator.templates import TemplateError, render
from orchestrator.trigger_spec import (
    FileTrigger,
    KafkaTrigger,
    ScheduleTrigger,
    TriggerSpec,
    WebhookTrigger,
)

log = logging.getLogger(__name__)

#: The built-in sensor whose correlation expressions intake must compute.
KAFKA_SENSOR = "sensor.kafka"

#: Sources whose events come a few at a time (a person, a schedule, a backfill):
#: their keys are looked up before run ids are drawn, so repeating one (an
#: Idempotency-Key, a logical date) uses up no run id. Kafka and webhook
#: batches skip that query on their hot path: a redelivery there uses up the
#: ids drawn for it (run ids are unique and increasing, not dense). An up-front
#: lookup cannot replace it: on a young table the planner caches a plan that
#: scans all events for it, while ON CONFLICT always uses the unique index.
LOOKED_UP_FIRST = frozenset({"manual", "schedule"})


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


def scope_of(event: Event) -> dict[str, Any]:
    return {"payload": event.payload, "headers": event.headers, "meta": event.meta}


@lru_cache(maxsize=1024)
def _compiled_filter(expression: str) -> Any:
    return jmespath.compile(expression)


@dataclass(frozen=True, slots=True)
class Route:
    workflow: str
    trigger: TriggerSpec
    schema: ParamsSchema | None = None
    """The params the workflow declares (None: it accepts any)."""

    def params_for(self, event: Event) -> dict[str, Any]:
        """The run params, checked against the workflow's declared params, or
        raise ``ValueError`` naming what failed."""
        scope = scope_of(event)
        if self.trigger.filter:
            try:
                if not _compiled_filter(self.trigger.filter).search(scope):
                    raise _Unmatched
            except JMESPathError as exc:
                raise ValueError(f"filter {self.trigger.filter!r} failed: {exc}") from None
        try:
            params = render(self.trigger.params, scope)
        except TemplateError as exc:
            raise ValueError(f"params mapping failed: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError("params mapping did not give an object")
        if self.schema is not None:
            try:
                return self.schema.check(params, workflow=self.workflow)
            except ParamsError as exc:
                raise ValueError(str(exc)) from None
        return params


class _Unmatched(Exception):
    """The trigger's filter said no: not an error."""


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` stays within a directory, ``**/`` spans any number of them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class Router:
    """Which workflows an event starts: one index per source, built from specs."""

    def __init__(self, workflows: Iterable[WorkflowSpec] = ()) -> None:
        self.kafka: dict[str, list[Route]] = defaultdict(list)
        self.webhooks: dict[str, list[Route]] = defaultdict(list)
        self.files: list[tuple[re.Pattern[str], Route]] = []
        self.schedules: list[Route] = []
        #: topic -> correlation expressions that Kafka sensors wait on
        self.sensor_exprs: dict[str, set[str]] = defaultdict(set)
        for spec in workflows:
            for task in spec.tasks:
                if task.handler == KAFKA_SENSOR:
                    topic, expr = task.inputs.get("topic"), task.inputs.get("correlation")
                    if isinstance(topic, str) and isinstance(expr, str):
                        self.sensor_exprs[topic].add(expr)
            for trigger in spec.triggers:
                route = Route(spec.name, trigger, spec.param_schema)
                if isinstance(trigger, KafkaTrigger):
                    self.kafka[trigger.topic].append(route)
                elif isinstance(trigger, WebhookTrigger):
                    self.webhooks[trigger.hook].append(route)
                elif isinstance(trigger, FileTrigger):
                    self.files.append((glob_regex(trigger.glob), route))
                elif isinstance(trigger, ScheduleTrigger):
                    self.schedules.append(route)

    def routes(self, event: Event) -> list[Route]:
        if event.source == "kafka":
            return self.kafka.get(event.channel, [])
        if event.source == "webhook":
            return self.webhooks.get(event.channel, [])
        if event.source == "file":
            return [route for regex, route in self.files if regex.match(event.channel)]
        return []

    def file_trigger_for(self, relative_path: str) -> list[FileTrigger]:
        return [
            r.trigger
            for regex, r in self.files
            if regex.match(relative_path) and isinstance(r.trigger, FileTrigger)
        ]

    @property
    def topics(self) -> list[str]:
        """Every topic to consume: those of triggers and those sensors wait on."""
        return sorted(set(self.kafka) | set(self.sensor_exprs))

    def event_keys(self, event: Event) -> list[str]:
        """Correlation keys of an event, for waits now or later."""
        keys = list(event.keys)
        if event.source == "file":
            keys.append(file_key(event.channel))
        elif event.source == "kafka":
            scope = scope_of(event)
            for expr in self.sensor_exprs.get(event.channel, ()):
                try:
                    value = _compiled_filter(expr).search(scope)
                except JMESPathError:
                    continue
                if value is not None:
                    keys.append(kafka_key(event.channel, expr, value))
        return keys

    @property
    def hooks(self) -> dict[str, list[WebhookTrigger]]:
        return {
            hook: [r.trigger for r in routes if isinstance(r.trigger, WebhookTrigger)]
            for hook, routes in self.webhooks.items()
        }


def glob_matches(pattern: str, relative_path: str) -> bool:
    return bool(glob_regex(pattern).match(relative_path)) or fnmatch.fnmatchcase(
        relative_path, pattern
    )


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


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
        a source could not even parse) are stored in the same commit."""
        async with self.engine.db.transaction() as conn:
            return await self.ingest_in(conn, events, dead_letters=dead_letters, actor=actor)

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
        total = sum(len(requests) for requests, _ in planned)
        ids = iter(await self.engine.allocate_run_ids(conn, total) if total else [])
        run_ids = [[next(ids) for _ in requests] for requests, _ in planned]
        rows = await conn.fetch(
            SQL.insert_events,
            [e.source for e in batch],
            [e.channel for e in batch],
            [e.dedup_key for e in batch],
            [_json_text(e.payload) for e in batch],
            [orjson.dumps(e.headers).decode() for e in batch],
            [orjson.dumps(e.meta).decode() for e in batch],
            [e.actor or actor for e in batch],
            ["{" + ",".join(map(str, r)) + "}" for r in run_ids],
        )
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
            if key in inserted:
                event_id = inserted[key]
                for req, rid in zip(requests, rids, strict=True):
                    new_requests.append(_with_event(req, event_id))
                    new_ids.append(rid)
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
            else:
                row = existing[key]
                answers[key] = Accepted(row["id"], list(row["run_ids"]), True)
        if new_requests:
            await self.engine.create_runs_in(
                conn, new_requests, new_ids, actor=actor, notices=notices
            )
        if letters:
            await self._dead_letters(conn, letters, inserted)
        fresh = [e for e in batch if e.dedup_key in inserted]
        if fresh:
            await self._wake_waits(conn, fresh, inserted, actor, notices)
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
        return results

    @staticmethod
    async def _known(conn: asyncpg.Connection, batch: Sequence[Event]) -> dict[str, asyncpg.Record]:
        """Stored events among those of ``LOOKED_UP_FIRST`` sources, by key."""
        keys = [e.dedup_key for e in batch if e.source in LOOKED_UP_FIRST]
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
        await conn.execute(SQL.insert_event_keys, keys, key_events)
        event_of_key = dict(zip(keys, key_events, strict=True))
        matches = [
            (r["id"], event_of_key[r["match_key"]])
            for r in await conn.fetch(SQL.waiting_for_keys, keys)
        ]
        files = [e for e in events if e.source == "file"]
        if files:
            rows = await conn.fetch(
                SQL.waiting_for_paths,
                [e.channel for e in files],
                [event_ids[e.dedup_key] for e in files],
            )
            matches += [(r["id"], r["event_id"]) for r in rows]
        if not matches:
            return
        resolutions = [
            _resolution(deferral_id, event_id, by_id[event_id])
            for deferral_id, event_id in dict(matches).items()
        ]
        await self.engine.resolve_in(conn, resolutions, actor=actor, notices=notices)

    async def registered_schemas(
        self, conn: asyncpg.Connection, names: Iterable[str]
    ) -> dict[str, ParamsSchema | None]:
        """The declared params of the versions new runs of ``names`` start with
        (events that name their workflow are checked against those). Unknown
        names are left out: creating their runs fails with the names known."""
        schemas: dict[str, ParamsSchema | None] = {}
        for row in await conn.fetch(SQL.current_versions, sorted(names)):
            compiled = await self.engine.specs.get(conn, row["current_version"])
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
            except _Unmatched:
                continue
            except ValueError as exc:
                reasons.append((route.workflow, str(exc)))
                continue
            requests.append(
                RunRequest(route.workflow, params, event.logical_date, event.interval_end)
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


def _with_event(req: RunRequest, event_id: int) -> RunRequest:
    return RunRequest(req.workflow, req.params, req.logical_date, req.interval_end, event_id)


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

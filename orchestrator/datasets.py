"""Dataset updates: recorded once, in the transaction that makes them, and
routed to the workflows they trigger in that same transaction.

An update comes from a task with ``outlets`` that succeeded (the engine calls
:func:`record_outlets` in the commit of the success), from
``POST /api/v1/datasets/{uri}/events`` or from the configured Kafka topic.
Each is an intake event (source ``dataset``, channel = the URI) with a dedup
key naming its origin (the producing attempt, an idempotency key, a Kafka
offset), so a repeated one records and starts nothing. A new one is a row in
``dataset_events`` and moves ``datasets.last_updated_at``.

Dataset triggers (:mod:`orchestrator.dataset_triggers`) are then found from
the workflows' current versions in the database (so every replica routes
alike) and each run they start is asked for as an event that names its
workflow (dedup key ``dataset-run:{workflow}:{trigger}:{update}``): intake
checks its params, holds it while the workflow is paused (per ``on_pause``)
and writes it with its run. That event is linked to the updates behind it
(``dataset_event_uses``): a run shows what caused it, an update the runs it
caused. Creating the consumer's run in the producer's commit (rather than
queuing it for later) keeps "exactly once" a property of one transaction:
either the success, its updates and the runs they start are all committed,
or none is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from orchestrator.dataset_refs import URI_PATTERN
from orchestrator.dataset_triggers import DatasetTrigger
from orchestrator.errors import DuplicateRunError, OrchestratorError
from orchestrator.intake import Accepted, DeadLetter, Event, Intake, Route, Router, trigger_key_of
from orchestrator.metrics import METRICS
from orchestrator.notices import Notices
from orchestrator.store import SQL
from orchestrator.templates import TemplateError, build_scope, render

if TYPE_CHECKING:
    from orchestrator.engine import Engine

log = logging.getLogger(__name__)

__all__ = ["DatasetUpdate", "Datasets", "record_outlets", "updates_from_messages"]

SOURCE = "dataset"

#: The partition of an ``all`` trigger that does not match logical dates.
NO_PARTITION = datetime.fromisoformat("0001-01-01T00:00:00+00:00")

#: Metadata larger than this (JSON) is not kept with an update.
MAX_METADATA_BYTES = 16_384


@dataclass(slots=True)
class DatasetUpdate:
    """One update of a dataset, as its producer reports it."""

    uri: str
    dedup_key: str
    metadata: dict[str, Any] = field(default_factory=dict)
    logical_date: datetime | None = None
    workflow: str | None = None
    run_id: int | None = None
    task_id: str | None = None
    actor: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "logical_date": self.logical_date.isoformat() if self.logical_date else None,
            "workflow": self.workflow,
            "run_id": self.run_id,
            "task_id": self.task_id,
        }

    def event(self) -> Event:
        return Event(
            source=SOURCE,
            channel=self.uri,
            dedup_key=self.dedup_key,
            payload=self.metadata,
            meta=self.describe(),
            actor=self.actor,
            logical_date=self.logical_date,
        )


def _metadata(value: Any) -> dict[str, Any]:
    """What is kept of an update's metadata: a JSON object of bounded size."""
    if not isinstance(value, dict):
        return {}
    if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
        return {"metadata_dropped": f"larger than {MAX_METADATA_BYTES} bytes"}
    return value


def metadata_for(output: Any, declared: str, uri: str) -> dict[str, Any]:
    """The metadata a handler returns for one outlet: ``output["outlets"][URI]``
    (the declared or the rendered URI) when the output names it, else the
    output itself when it is an object (``{"rows": 120}``)."""
    if not isinstance(output, dict):
        return {}
    per_outlet = output.get("outlets")
    if isinstance(per_outlet, dict):
        for key in (uri, declared):
            if key in per_outlet:
                return _metadata(per_outlet[key])
        return {}
    return _metadata(output)


@dataclass(frozen=True, slots=True)
class _Consumer:
    workflow: str
    key: str
    trigger: DatasetTrigger
    route: Route


class Datasets:
    """Records updates and starts the runs their triggers ask for."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Update events are not routed by channel: only the events this module
        # makes, which name their workflow, start runs.
        router = Router(())
        router.looked_up_first = router.looked_up_first | {SOURCE}
        self.intake = Intake(engine, router)

    async def record(self, updates: Sequence[DatasetUpdate], *, actor: str) -> list[Accepted]:
        async with self.engine.unit() as (conn, notices):
            return await self.record_in(conn, updates, actor=actor, notices=notices)

    async def record_in(
        self,
        conn: asyncpg.Connection,
        updates: Sequence[DatasetUpdate],
        *,
        actor: str,
        notices: Notices,
    ) -> list[Accepted]:
        """Record ``updates`` in the caller's transaction; the answers say, for
        each, its event id, the runs it started at once, and whether it was
        a repeat (nothing recorded)."""
        answers = await self.intake.ingest_in(
            conn, [u.event() for u in updates], actor=actor, notices=notices
        )
        fresh = [(u, a) for u, a in zip(updates, answers, strict=True) if not a.duplicate]
        if not fresh:
            return answers
        rows = await conn.fetch(
            SQL.insert_dataset_events,
            [a.event_id for _, a in fresh],
            [u.uri for u, _ in fresh],
            [u.workflow for u, _ in fresh],
            [u.run_id for u, _ in fresh],
            [u.task_id for u, _ in fresh],
            [u.logical_date for u, _ in fresh],
            [orjson.dumps(u.metadata).decode() for u, _ in fresh],
            self.engine.clock.stamp(),
        )
        ids = {r["event_id"]: r["id"] for r in rows}
        METRICS.dataset_updates(u.uri for u, _ in fresh)
        started = await self._start_consumers(
            conn, [(u, ids[a.event_id]) for u, a in fresh], actor, notices
        )
        if started:
            named = [(a, started[u.dedup_key]) for u, a in fresh if u.dedup_key in started]
            await conn.execute(
                SQL.add_update_runs,
                [a.event_id for a, _ in named],
                ["{" + ",".join(map(str, runs)) + "}" for _, runs in named],
            )
            for answer, runs in named:
                answer.run_ids = answer.run_ids + runs
        return answers

    async def _consumers(self, conn: asyncpg.Connection) -> list[_Consumer]:
        found: list[_Consumer] = []
        for row in await conn.fetch(SQL.dataset_trigger_workflows):
            spec = (await self.engine.compiled_workflow(row["current_version"], conn)).spec
            for index, trigger in enumerate(spec.triggers):
                if isinstance(trigger, DatasetTrigger):
                    key = trigger_key_of(index)
                    route = Route(spec.name, trigger, spec.param_schema, key)
                    found.append(_Consumer(spec.name, key, trigger, route))
        return found

    async def _start_consumers(
        self,
        conn: asyncpg.Connection,
        fresh: Sequence[tuple[DatasetUpdate, int]],
        actor: str,
        notices: Notices,
    ) -> dict[str, list[int]]:
        """Route new updates to the dataset triggers; returns, by update dedup
        key, the runs started at once."""
        consumers = await self._consumers(conn)
        if not consumers:
            return {}
        starts: list[tuple[Event, DatasetUpdate, list[int]]] = []
        letters: list[DeadLetter] = []
        for update, dataset_event_id in fresh:
            for consumer in consumers:
                start = await self._consider(conn, consumer, update, dataset_event_id, letters)
                if start is not None:
                    starts.append((start[0], update, start[1]))
        if not starts and not letters:
            return {}
        taken = await self._dates_taken(conn, [e for e, _, _ in starts])
        starts = [s for i, s in enumerate(starts) if i not in taken]
        answers = await self._ingest(conn, [e for e, _, _ in starts], letters, actor, notices)
        uses: list[tuple[int, int]] = []
        started: dict[str, list[int]] = {}
        for (_event, update, used), answer in zip(starts, answers, strict=True):
            if answer is None or answer.duplicate:
                continue
            uses += [(dataset_event_id, answer.event_id) for dataset_event_id in used]
            started.setdefault(update.dedup_key, []).extend(answer.run_ids)
        if uses:
            await conn.execute(
                SQL.insert_dataset_event_uses, [u[0] for u in uses], [u[1] for u in uses]
            )
        return started

    async def _consider(
        self,
        conn: asyncpg.Connection,
        consumer: _Consumer,
        update: DatasetUpdate,
        dataset_event_id: int,
        letters: list[DeadLetter],
    ) -> tuple[Event, list[int]] | None:
        """The event asking for ``consumer``'s run that ``update`` completes,
        with the updates behind it; None when it starts nothing (yet)."""
        trigger = consumer.trigger
        slots = trigger.slots_of(update.uri)
        if not slots:
            return None
        if trigger.partition and update.logical_date is None:
            log.info(
                "update of %s has no logical date: %s matches partitions only",
                update.uri,
                consumer.workflow,
            )
            return None
        described = [{**update.describe(), "metadata": update.metadata}]
        event = self._trigger_event(consumer, update, dataset_event_id, described)
        try:
            # The filter and the mapping see this update: does it count?
            event.params = consumer.route.params_for(event)
        except ValueError as exc:
            letters.append(self._letter(consumer, update, str(exc)))
            return None
        except OrchestratorError:
            return None  # the trigger's filter said no
        if trigger.any_of:
            return event, [dataset_event_id]
        partition = update.logical_date if trigger.partition else NO_PARTITION
        # One decision at a time per trigger and partition: two updates
        # committed at once cannot both see the set complete, or both miss it.
        await conn.execute(
            SQL.lock_keys, [f"dataset-all:{consumer.workflow}:{consumer.key}:{partition}"]
        )
        rows = await conn.fetch(
            SQL.add_pending_updates,
            consumer.workflow,
            consumer.key,
            partition,
            slots,
            [dataset_event_id] * len(slots),
        )
        if {r["slot"] for r in rows} != set(range(len(trigger.all_of))):
            return None
        await conn.execute(SQL.take_pending_updates, consumer.workflow, consumer.key, partition)
        used = sorted({r["dataset_event_id"] for r in rows})
        described = [
            {
                "uri": r["uri"],
                "logical_date": r["logical_date"].isoformat() if r["logical_date"] else None,
                "workflow": r["workflow"],
                "run_id": r["run_id"],
                "task_id": r["task_id"],
                "metadata": orjson.loads(r["metadata"]),
            }
            for r in await conn.fetch(SQL.dataset_events_by_id, used)
        ]
        event = self._trigger_event(consumer, update, dataset_event_id, described)
        try:
            event.params = consumer.route.params_for(event)
        except ValueError as exc:
            letters.append(self._letter(consumer, update, str(exc)))
            return None
        except OrchestratorError:
            return None
        return event, used

    @staticmethod
    def _trigger_event(
        consumer: _Consumer,
        update: DatasetUpdate,
        dataset_event_id: int,
        described: list[dict[str, Any]],
    ) -> Event:
        return Event(
            source=SOURCE,
            channel=consumer.workflow,
            dedup_key=f"dataset-run:{consumer.workflow}:{consumer.key}:{dataset_event_id}",
            payload=update.metadata,
            meta={**update.describe(), "dataset_event_id": dataset_event_id, "updates": described},
            actor=update.actor,
            workflow=consumer.workflow,
            logical_date=update.logical_date if consumer.trigger.partition else None,
        )

    @staticmethod
    def _letter(consumer: _Consumer, update: DatasetUpdate, reason: str) -> DeadLetter:
        return DeadLetter(
            SOURCE,
            update.uri,
            f"dataset-run:{consumer.workflow}:{consumer.key}:{update.dedup_key}",
            reason,
            raw=orjson.dumps(update.metadata).decode(),
            meta=update.describe(),
            workflow=consumer.workflow,
        )

    @staticmethod
    async def _dates_taken(conn: asyncpg.Connection, events: Sequence[Event]) -> set[int]:
        """Runs asked for a logical date that has a run already: left out (and
        logged) rather than run into the unique (workflow, logical date) index,
        which would undo the producer's whole commit."""
        dated = [(i, e) for i, e in enumerate(events) if e.logical_date is not None]
        if not dated:
            return set()
        rows = await conn.fetch(
            SQL.dataset_dates_taken,
            [e.workflow for _, e in dated],
            [e.logical_date for _, e in dated],
            [e.dedup_key for _, e in dated],
        )
        taken = {dated[r["n"] - 1][0] for r in rows}
        for i in sorted(taken):
            event = events[i]
            log.warning(
                "%s already has a run for logical date %s: the update of %s starts none "
                "(clear that run to process it again)",
                event.workflow,
                event.logical_date,
                event.meta.get("uri"),
            )
        return taken

    async def _ingest(
        self,
        conn: asyncpg.Connection,
        events: Sequence[Event],
        letters: Sequence[DeadLetter],
        actor: str,
        notices: Notices,
    ) -> list[Accepted | None]:
        try:
            async with conn.transaction():  # a savepoint: a date clash undoes only this
                return list(
                    await self.intake.ingest_in(
                        conn, events, dead_letters=letters, actor=actor, notices=notices
                    )
                )
        except DuplicateRunError:
            pass  # a run for one of the dates was created meanwhile: one at a time
        answers: list[Accepted | None] = []
        for event in events:
            try:
                async with conn.transaction():
                    answers += await self.intake.ingest_in(
                        conn, [event], actor=actor, notices=notices
                    )
            except DuplicateRunError:
                log.warning("%s: a run for %s exists already", event.workflow, event.logical_date)
                answers.append(None)
        if letters:
            await self.intake.ingest_in(conn, [], dead_letters=letters, actor=actor)
        return answers


def updates_from_messages(
    events: Sequence[Event], topic: str | None
) -> tuple[list[Event], list[DatasetUpdate], list[DeadLetter]]:
    """Split a batch of Kafka events: those on the dataset ``topic`` are
    updates (``{"uri", "logical_date", "metadata"}``), keeping the message's
    dedup key; one that is not is a dead letter naming what is wrong."""
    if topic is None:
        return list(events), [], []
    others: list[Event] = []
    updates: list[DatasetUpdate] = []
    letters: list[DeadLetter] = []
    for event in events:
        if event.channel != topic:
            others.append(event)
            continue
        try:
            updates.append(update_from_payload(event.payload, event.dedup_key))
        except ValueError as exc:
            letters.append(
                DeadLetter(
                    event.source,
                    event.channel,
                    event.dedup_key,
                    f"not a dataset update: {exc}",
                    raw=orjson.dumps(event.payload).decode(),
                    headers=event.headers,
                    meta=event.meta,
                )
            )
    return others, updates, letters


def update_from_payload(payload: Any, dedup_key: str) -> DatasetUpdate:
    if not isinstance(payload, dict):
        raise ValueError(
            'expected a JSON object {"uri": ..., "logical_date": ..., "metadata": ...}'
        )
    unknown = sorted(set(payload) - {"uri", "logical_date", "metadata"})
    if unknown:
        raise ValueError(
            f"unexpected key(s) {', '.join(unknown)} (known: uri, logical_date, metadata)"
        )
    uri = payload.get("uri")
    if not isinstance(uri, str) or not URI_PATTERN.match(uri) or "{{" in uri:
        raise ValueError(f"'uri' {uri!r} is not a dataset URI (scheme://...)")
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be a JSON object")
    day = payload.get("logical_date")
    logical_date = None
    if day is not None:
        try:
            logical_date = datetime.fromisoformat(str(day))
        except ValueError:
            raise ValueError(f"'logical_date' {day!r} is not an ISO 8601 date") from None
        if logical_date.tzinfo is None:
            logical_date = logical_date.replace(tzinfo=UTC)
    return DatasetUpdate(
        uri=uri,
        dedup_key=f"dataset-update:{dedup_key}",
        metadata=_metadata(metadata),
        logical_date=logical_date,
        actor="kafka",
    )


async def record_outlets(
    engine: Engine,
    conn: asyncpg.Connection,
    producing: Sequence[tuple[int, str]],
    *,
    actor: str,
    notices: Notices,
) -> None:
    """The updates of the outlets of tasks that succeeded in this commit:
    URIs rendered like inputs (over ``params``, ``run`` and ``task``),
    metadata from the handler's output (:func:`metadata_for`)."""
    rows = await conn.fetch(SQL.outlet_tasks, [r for r, _ in producing], [t for _, t in producing])
    updates: list[DatasetUpdate] = []
    for row in rows:
        task = (await engine.compiled_workflow(row["version"], conn)).tasks[row["task_id"]]
        scope = build_scope(
            params=orjson.loads(row["params"]),
            upstream={},
            run_id=row["run_id"],
            workflow=row["workflow"],
            task_id=row["task_id"],
            attempt=row["attempt"],
            logical_date=row["logical_date"],
            interval_end=row["interval_end"],
        )
        output = orjson.loads(row["output"]) if row["output"] is not None else None
        for outlet in task.outlets:
            try:
                uri = str(render(outlet.uri, scope))
            except TemplateError as exc:
                # The task succeeded: its success stands, the update is not announced.
                log.error(
                    "run %s task %s: outlet %s not rendered: %s",
                    row["run_id"],
                    row["task_id"],
                    outlet.uri,
                    exc,
                )
                continue
            updates.append(
                DatasetUpdate(
                    uri=uri,
                    dedup_key=(
                        f"dataset-update:run:{row['run_id']}:{row['task_id']}:"
                        f"{row['attempt']}:{uri}"
                    ),
                    metadata=metadata_for(output, outlet.uri, uri),
                    logical_date=row["logical_date"],
                    workflow=row["workflow"],
                    run_id=row["run_id"],
                    task_id=row["task_id"],
                    actor=f"run:{row['run_id']}",
                )
            )
    if updates:
        await Datasets(engine).record_in(conn, updates, actor=actor, notices=notices)

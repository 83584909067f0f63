"""Lifecycle events out: run and task transitions, dataset updates and alerts
published to a Kafka topic as CloudEvents 1.0 (structured JSON), keyed by run id.

The outbox is what the engine already writes in the transaction of each change:
the ``transitions``, ``dataset_events`` and ``alerts`` rows (migration 0018 adds
the id of the writing transaction to each). Nothing more is written on the hot
path, on or off.

Why snapshot windows and not "ids past a cursor": ids come from a sequence and
commit out of order, so reading past the highest id seen would skip an id whose
transaction commits later. A partition's cursor holds instead the snapshot
``done`` whose visible rows are all published. A pass takes the present
snapshot ``window_to`` and publishes the rows visible in it and not in ``done``
(the transactions that committed in between); a transaction still in progress
is in neither and waits for a later window. In a window, rows go out in
(stage, id) order: a change that waited for another's commit (a lock on the
same task or run) takes its ids after it, so each run's events keep their order.

Several relays: run ids are split into ``parts`` partitions, each with its own
cursor row; a relay leases one partition for one window (``SKIP LOCKED``),
checkpoints after every page the broker has acknowledged, and releases it. In
the normal case nothing is published twice. A relay killed between publishing
and its checkpoint leaves a lease that runs out: the next relay publishes that
page again, with the same CloudEvents ``id`` on each duplicate (at least once).

Order on the wire: one producer per process; aiokafka keeps one request in
flight per partition (so a retry never reorders), and ``acks=all`` with
idempotence on (``ORCHESTRATOR_KAFKA_IDEMPOTENT_PRODUCER``) for real brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.clock import Clock, monotonic
from orchestrator.metrics import METRICS
from orchestrator.settings import Settings
from orchestrator.sources import SourceContext, loop_stopped
from orchestrator.store import Database, connect
from sources.kafka_config import DefaultPartitioner, KafkaError, describe, make_producer
from sources.lifecycle_events import encode
from sources.queries import SQL

if TYPE_CHECKING:
    from orchestrator.intake import Router

log = logging.getLogger(__name__)

#: A named fault point, awaited with "before_acks" once a page is queued to the
#: producer (some of it may be on the broker) and "after_publish" once the
#: broker has acknowledged it, before its checkpoint: tests kill the process there.
Fault = Callable[[str], Awaitable[None]]

_LOOP = "lifecycle relay"
_PARTITIONER = DefaultPartitioner()

#: The relay's own sessions. Each page is planned with its bounds: a window's
#: first page scans its txid range, later ones start at their id; the generic
#: plan a prepared statement turns to after five runs would scan the whole
#: window for every page. Its commits (cursor moves, after the broker's
#: acknowledgement) need no flush to disk: one lost in a database crash only
#: means those events go out again, never that one is skipped.
_SESSION = {"plan_cache_mode": "force_custom_plan", "synchronous_commit": "off"}

#: How often a relay summarizes the outbox tables' new BRIN ranges.
SUMMARIZE_EVERY_S = 1.0


@dataclass(frozen=True)
class GroupStatus:
    """Where the relays of the database stand, over every partition."""

    published_through: datetime | None
    """Every change committed before this is published (None: never started)."""
    published: int
    leased: int
    """Partitions a relay holds right now."""


async def group_status(db: Database) -> GroupStatus:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.lifecycle_horizon)
    assert row is not None
    return GroupStatus(row["published_through"], row["published"] or 0, row["leased"])


def relay_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LifecycleRelay:
    """Publishes the lifecycle outbox; a :class:`~orchestrator.sources.Source`
    so that a process runs it like any source (started, stopped, in ``/readyz``)."""

    name = "lifecycle"

    def __init__(
        self,
        *,
        owner: str | None = None,
        fault: Fault | None = None,
        producer_options: dict[str, Any] | None = None,
        background: bool = True,
    ) -> None:
        """``background=False``: no loop of its own; the caller publishes with
        :meth:`drain` (tests, deterministic)."""
        self.owner = owner or relay_owner()
        self._background = background
        self._fault = fault
        self._producer_options = producer_options or {}
        self._settings: Settings | None = None
        self._db: Database | None = None
        self._shared: Database | None = None
        self._clock: Clock | None = None
        self._liveness: Any = None
        self._producer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._held: int | None = None
        #: Every change committed before this time is published (all partitions,
        #: as of this relay's last finished window).
        self.published_through: datetime | None = None
        self.published = 0
        self._summarized_at: float | None = None

    # -- Source protocol -------------------------------------------------------------

    def setup(self, ctx: SourceContext) -> None:
        self.attach(ctx.settings, ctx.engine.db, ctx.clock)
        self._liveness = ctx.liveness

    def attach(self, settings: Settings, db: Database, clock: Clock) -> None:
        """Use ``db`` and ``settings`` (outside an orchestrator process: bench, tests)."""
        if not settings.lifecycle_topic:
            raise ValueError("the lifecycle relay needs ORCHESTRATOR_LIFECYCLE_TOPIC")
        self._settings, self._db, self._clock = settings, db, clock
        self._shared = db

    def use_router(self, router: Router) -> None:
        """Publishes whatever happens: workflows do not matter."""

    async def not_ready(self) -> str | None:
        return loop_stopped(self._task, _LOOP)

    async def start(self) -> None:
        settings, shared = self._ready()
        db = await connect(shared.url, size=2, min_size=1, server_settings=_SESSION)
        producer = None
        try:
            async with db.pool.acquire() as conn:
                await conn.execute(SQL.lifecycle_create_cursors, settings.lifecycle_partitions)
            options = {"linger_ms": 5, "max_batch_size": 1 << 20, **self._producer_options}
            producer = make_producer(settings, **options)
            await producer.start()
        except BaseException as exc:
            if producer is not None:
                await producer.stop()
            await db.close()
            if isinstance(exc, KafkaError):
                raise ConnectionError(
                    f"the lifecycle relay cannot reach Kafka at {describe(settings)}: {exc}"
                ) from None
            raise
        self._db, self._producer = db, producer
        self._install_lag_gauge()
        if self._background:
            self._task = asyncio.create_task(self._run(), name="orchestrator-lifecycle-relay")
        log.info("publishing lifecycle events to %s as %s", settings.lifecycle_topic, self.owner)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._held is not None and self._db is not None:
            # Let another relay go on at once rather than after the lease.
            with contextlib.suppress(Exception):
                async with self._db.pool.acquire() as conn:
                    await conn.execute(SQL.lifecycle_release, self._held, self.owner)
            self._held = None
        if self._db is not None and self._db is not self._shared:
            await self._db.close()
            self._db = self._shared
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._liveness is not None:
            self._liveness.forget(_LOOP)
        METRICS.lifecycle_lag_s.set_function(lambda: 0.0)  # no longer this relay's reading

    async def __aenter__(self) -> LifecycleRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop ---------------------------------------------------------------------

    def _ready(self) -> tuple[Settings, Database]:
        if self._settings is None or self._db is None:
            raise RuntimeError("setup() or attach() first")
        return self._settings, self._db

    async def _run(self) -> None:
        settings, _ = self._ready()
        assert self._clock is not None
        while True:
            if self._liveness is not None:
                self._liveness.beat(_LOOP)
            try:
                worked = await self.pass_once() is not None
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle relay pass failed; trying again")
                worked = False
            if not worked:
                await self._clock.sleep(settings.lifecycle_poll_s / 2)

    async def drain(self) -> int:
        """Publish until a window of every partition was found empty; returns
        how many events were published."""
        _settings, db = self._ready()
        async with db.pool.acquire() as conn:
            parts = await conn.fetchval(SQL.lifecycle_parts)
        empty: set[int] = set()
        total = 0
        while len(empty) < parts:
            done = await self.pass_once(due_only=False)
            if done is None:
                continue
            part, count = done
            total += count
            if count == 0:
                empty.add(part)
            else:
                empty.discard(part)
        return total

    async def pass_once(self, *, due_only: bool = True) -> tuple[int, int] | None:
        """Lease one due partition (any free one unless ``due_only``) and publish
        its next window: (partition, events published), or None when none was
        due and free."""
        settings, db = self._ready()
        await self._summarize(db)
        async with db.pool.acquire() as conn:
            claim = await conn.fetchrow(
                SQL.lifecycle_claim, self.owner, settings.lifecycle_lease_s, due_only
            )
        if claim is None:
            return None
        part = claim["part"]
        self._held = part
        after = (claim["after_stage"], claim["after_id"])
        window_rows = 0
        while True:
            async with db.pool.acquire() as conn:
                rows = await conn.fetch(
                    SQL.lifecycle_window,
                    claim["done"],
                    claim["window_to"],
                    claim["parts"],
                    part,
                    after[0],
                    after[1],
                    settings.lifecycle_batch,
                )
            if rows:
                await self._publish(rows)
                if self._fault is not None:
                    await self._fault("after_publish")
                after = (rows[-1]["stage"], rows[-1]["id"])
                window_rows += len(rows)
            if len(rows) < settings.lifecycle_batch:
                break
            async with db.pool.acquire() as conn:
                kept = await conn.fetchval(
                    SQL.lifecycle_checkpoint,
                    part,
                    self.owner,
                    after[0],
                    after[1],
                    len(rows),
                    settings.lifecycle_lease_s,
                )
            if kept is None:
                log.warning("lost the lease of lifecycle partition %d; another relay goes on", part)
                self._held = None
                return part, window_rows
        # Behind (a full page or more): go on at once. Else wait the poll
        # interval, so that a busy partition's windows gather a poll's worth
        # of changes rather than costing a few statements per handful.
        next_in = 0.0 if window_rows >= settings.lifecycle_batch else settings.lifecycle_poll_s
        async with db.pool.acquire() as conn:
            finished = await conn.fetchrow(
                SQL.lifecycle_finish,
                part,
                self.owner,
                len(rows),
                next_in,
            )
        self._held = None
        if finished is None:
            log.warning("lost the lease of lifecycle partition %d; another relay goes on", part)
        else:
            self.published_through = finished["published_through"]
        return part, window_rows

    async def _summarize(self, db: Database) -> None:
        now = monotonic()
        if self._summarized_at is not None and now - self._summarized_at < SUMMARIZE_EVERY_S:
            return
        self._summarized_at = now
        try:
            async with db.pool.acquire() as conn:
                await conn.fetchval(SQL.lifecycle_summarize)
        except asyncpg.InsufficientPrivilegeError:
            # Not the tables' owner: autovacuum summarizes (autosummarize), later.
            log.warning(
                "the lifecycle relay may not summarize the outbox indexes; "
                "windows read more until autovacuum does"
            )
            self._summarized_at = float("inf")

    async def _publish(self, rows: list[Any]) -> None:
        """Send ``rows`` and wait until the broker has acknowledged them all.

        Batches are built here, one per Kafka partition (the key's, by the
        default murmur2 partitioner every Kafka client uses), which costs far
        less per event than one ``send`` each; a partition's batches are queued
        in order."""
        settings, _ = self._ready()
        topic, source = settings.lifecycle_topic, settings.lifecycle_source
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        partition_of: dict[bytes, int] = {}  # murmur2 in Python: once per run
        batches: dict[int, Any] = {}
        acks = []
        for row in rows:
            key, value = encode(row, source)
            partition = partition_of.get(key)
            if partition is None:
                partition = partition_of[key] = _PARTITIONER(key, partitions, partitions)
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for partition, batch in batches.items():
            acks.append(await producer.send_batch(batch, topic, partition=partition))
        if self._fault is not None:
            await self._fault("before_acks")
        await asyncio.gather(*acks)
        self.published += len(rows)
        METRICS.lifecycle_published.inc(len(rows))

    # -- lag ----------------------------------------------------------------------------

    def lag_s(self) -> float:
        """Seconds between now and the time before which every change is
        published (as of this relay's last finished window): a change committed
        longer ago than this is on the topic."""
        if self.published_through is None or self._clock is None:
            return 0.0
        return max(0.0, (self._clock.now() - self.published_through).total_seconds())

    def _install_lag_gauge(self) -> None:
        METRICS.lifecycle_lag_s.set_function(self.lag_s)

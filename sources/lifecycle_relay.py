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
cursor row; a relay leases its share of the partitions (all of them when it is
alone, else the partitions over the relays alive, rounded up) for one window
(``SKIP LOCKED``), checkpoints after every page the broker has acknowledged,
and releases them. Partitions leased together open their windows at the same
snapshot, so one read publishes them all: a relay's cost follows its windows,
not the number of partitions. In the normal case nothing is published twice.
A relay killed between publishing and its checkpoint leaves a lease that runs
out: the next relay publishes that page again, with the same CloudEvents
``id`` on each duplicate (at least once).

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
from sources.lifecycle_events import TRANSITION, encode_values, key_of
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
#: window for every page. No sequential scans: on tables without statistics
#: yet (a new database) the planner would read the whole table rather than
#: the BRIN ranges of a window; and so no JIT, which the cost of a disabled
#: scan would set off for a statement of microseconds. Its commits (cursor moves,
#: after the broker's acknowledgement) need no flush to disk: one lost in a
#: database crash only means those events go out again, never that one is
#: skipped.
SESSION = {
    "plan_cache_mode": "force_custom_plan",
    "enable_seqscan": "off",
    "jit": "off",
    "synchronous_commit": "off",
}

#: How often a relay summarizes the outbox tables' new BRIN ranges.
SUMMARIZE_EVERY_S = 1.0

#: Kafka partitions and workflows of runs a relay remembers (then it starts afresh).
_KEYS_KEPT = 1 << 16


@dataclass(frozen=True)
class Pass:
    """What one pass of a relay did."""

    parts: frozenset[int]
    """The partitions it leased."""
    empty: frozenset[int]
    """Those whose window had nothing to publish."""
    published: int
    due_in_s: float
    """How long until a partition no one holds is due (0: at once)."""


@dataclass(frozen=True)
class _Window:
    """Leased partitions with the same window, read and published together."""

    parts: list[int]
    done: str
    window_to: str
    after: tuple[int, int]


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


def _counts(parts: list[int], rows: list[Any]) -> list[int]:
    """How many of ``rows`` belong to each of ``parts``."""
    counts = dict.fromkeys(parts, 0)
    for row in rows:
        counts[row["part"]] += 1
    return list(counts.values())


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
        self._held: list[int] = []
        #: Every change committed before this time is published (all partitions,
        #: as of this relay's last finished window).
        self.published_through: datetime | None = None
        self.published = 0
        self._summarized_at: float | None = None
        self._joined_at: float | None = None
        self._partitions: list[int] = []
        self._partition_of: dict[bytes, int] = {}
        self._workflow_of: dict[int, str | None] = {}

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
        db = await connect(shared.url, size=2, min_size=1, server_settings=SESSION)
        producer = None
        try:
            async with db.pool.acquire() as conn:
                await conn.execute(SQL.lifecycle_create_cursors, settings.lifecycle_partitions)
                await conn.execute(SQL.lifecycle_join, self.owner, settings.lifecycle_lease_s)
            self._joined_at = monotonic()
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
        if self._db is not None and self._db is not self._shared:
            # Let another relay go on at once rather than after the lease,
            # and take all the partitions rather than a share.
            with contextlib.suppress(Exception):
                async with self._db.pool.acquire() as conn:
                    if self._held:
                        await conn.execute(SQL.lifecycle_release, self._held, self.owner)
                    await conn.execute(SQL.lifecycle_leave, self.owner)
        self._held = []
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
                done = await self.pass_once()
                wait_s = settings.lifecycle_poll_s / 2 if done is None else done.due_in_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle relay pass failed; trying again")
                wait_s = settings.lifecycle_poll_s / 2
            if wait_s > 0:
                await self._clock.sleep(min(wait_s, settings.lifecycle_poll_s))

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
            total += done.published
            empty = (empty - done.parts) | done.empty
        return total

    async def pass_once(self, *, due_only: bool = True) -> Pass | None:
        """Lease this relay's share of the due partitions (of the free ones
        unless ``due_only``) and publish their next windows; None when none
        was due and free."""
        settings, db = self._ready()
        await self._housekeeping(db, settings)
        async with db.pool.acquire() as conn:
            claims = await conn.fetch(
                SQL.lifecycle_claim, self.owner, settings.lifecycle_lease_s, due_only
            )
        if not claims:
            return None
        parts = self._held = [claim["part"] for claim in claims]
        windows: dict[tuple[str, str, int, int], _Window] = {}
        for claim in claims:
            after = (claim["after_stage"], claim["after_id"])
            key = (claim["done"], claim["window_to"], *after)
            if key not in windows:
                windows[key] = _Window([], claim["done"], claim["window_to"], after)
            windows[key].parts.append(claim["part"])
        nparts = claims[0]["parts"]
        published, empty, due_in_s = 0, set(), settings.lifecycle_poll_s
        for i, window in enumerate(windows.values()):
            # A window after the first starts with its lease renewed (the
            # first may have taken long), or not at all when it was lost.
            if i and not await self._checkpoint(db, settings, window, [0] * len(window.parts)):
                continue
            count, due_in = await self._publish_window(db, settings, nparts, window)
            published += count
            if count == 0:
                empty.update(window.parts)
            if due_in is not None:
                due_in_s = min(due_in_s, due_in)
        self._held = []
        return Pass(frozenset(parts), frozenset(empty), published, due_in_s)

    async def _publish_window(
        self, db: Database, settings: Settings, nparts: int, window: _Window
    ) -> tuple[int, float | None]:
        """Publish ``window`` page by page and finish it: (events published,
        seconds until a free partition is due; None when a lease was lost)."""
        batch = settings.lifecycle_batch
        after = window.after
        published = 0
        while True:
            async with db.pool.acquire() as conn:
                rows = await conn.fetch(
                    SQL.lifecycle_window,
                    window.done,
                    window.window_to,
                    nparts,
                    window.parts,
                    after[0],
                    after[1],
                    batch,
                )
                await self._learn_workflows(conn, rows)
            if rows:
                await self._publish(rows)
                if self._fault is not None:
                    await self._fault("after_publish")
                after = (rows[-1]["stage"], rows[-1]["id"])
                published += len(rows)
            counts = _counts(window.parts, rows)
            if len(rows) < batch:
                break
            window = _Window(window.parts, window.done, window.window_to, after)
            if not await self._checkpoint(db, settings, window, counts):
                return published, None
        # Behind (a full page or more): go on at once. Else wait the poll
        # interval, so that a busy partition's windows gather a poll's worth
        # of changes rather than costing a few statements per handful.
        next_in = 0.0 if published >= batch else settings.lifecycle_poll_s
        async with db.pool.acquire() as conn:
            finished = await conn.fetch(
                SQL.lifecycle_finish, window.parts, self.owner, counts, next_in
            )
        if len(finished) < len(window.parts):
            log.warning(
                "lost the lease of lifecycle partitions %s; another relay goes on",
                sorted(set(window.parts) - {row["part"] for row in finished}),
            )
        if finished:
            self.published_through = min(row["published_through"] for row in finished)
            return published, min(row["due_in_s"] for row in finished)
        return published, None

    async def _learn_workflows(self, conn: asyncpg.Connection, rows: list[Any]) -> None:
        """Read the workflow of the runs in ``rows`` not seen before."""
        known = self._workflow_of
        runs = {row["run_id"] for row in rows if row["stage"] == TRANSITION} - known.keys()
        if not runs:
            return
        if len(known) + len(runs) > _KEYS_KEPT:
            known.clear()
        known.update(dict.fromkeys(runs))  # a run deleted since: none
        for run in await conn.fetch(SQL.lifecycle_run_workflows, list(runs)):
            known[run["id"]] = run["workflow"]

    async def _checkpoint(
        self, db: Database, settings: Settings, window: _Window, counts: list[int]
    ) -> bool:
        """Record that ``window`` is published up to its ``after`` (``counts``
        more events of each partition) and renew its leases; False (and the
        leases still held released) when another relay took one over."""
        async with db.pool.acquire() as conn:
            kept = await conn.fetch(
                SQL.lifecycle_checkpoint,
                window.parts,
                self.owner,
                window.after[0],
                window.after[1],
                counts,
                settings.lifecycle_lease_s,
            )
            if len(kept) == len(window.parts):
                return True
            log.warning(
                "lost the lease of lifecycle partitions %s; another relay goes on",
                sorted(set(window.parts) - {row["part"] for row in kept}),
            )
            if kept:
                await conn.execute(SQL.lifecycle_release, window.parts, self.owner)
        return False

    async def _housekeeping(self, db: Database, settings: Settings) -> None:
        """Keep this relay counted among the live ones and the BRIN summaries current."""
        now = monotonic()
        if self._joined_at is None or now - self._joined_at >= settings.lifecycle_lease_s / 4:
            self._joined_at = now
            async with db.pool.acquire() as conn:
                await conn.execute(SQL.lifecycle_join, self.owner, settings.lifecycle_lease_s)
        await self._summarize(db)

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
        # murmur2 in Python costs microseconds: once per run, not per event.
        partition_of = self._partition_of
        if partitions != self._partitions or len(partition_of) > _KEYS_KEPT:
            self._partitions = partitions
            partition_of.clear()
        batches: dict[int, Any] = {}
        acks = []
        values = encode_values(rows, source, self._workflow_of)
        for row, value in zip(rows, values, strict=True):
            key = key_of(row)
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

"""Kafka intake: JSON messages on the topics that workflows' Kafka triggers name.

One consumer in the group ``settings.kafka_group_id`` reads every such topic.
Each ``getmany`` batch (up to ``kafka_batch_max`` messages, across partitions)
becomes ONE ``Intake.ingest`` call, so one PostgreSQL transaction; only after it
commits are the partitions' offsets committed (``enable_auto_commit=False``).
A message's dedup key is ``kafka:{log}:{topic}:{partition}:{offset}``, where
``{log}`` names the log the offset belongs to (cluster and topic id, see
:mod:`sources.kafka_logs`): a message delivered again (after a crash, a
rebalance, a second group) starts nothing new, and a log that starts again at
offset 0 (a topic created again, an in-memory broker restarted) is not taken
for a redelivery. Each partition's log is looked up once per assignment,
before its first messages are keyed.

A newly assigned partition whose committed offset is past its high watermark
reads a log that started again: it is logged (WARNING), counted
(``stats.committed_past_end``) and read from its beginning, instead of
waiting past the end for offsets that may never come.

A message that is not UTF-8 JSON, or is larger than ``max_payload_bytes``, is
dead-lettered in the same transaction and its offset committed like any other:
a poison message never blocks a partition.
While PostgreSQL is down the batches are kept and retried with backoff; nothing
is committed meanwhile.

A few batches are recorded at once (``pipeline``), so PostgreSQL works on one
while the next is parsed; offsets are committed in fetch order, never past a
batch that is not recorded. Rebalances: the listener's ``on_partitions_revoked``
waits for the batches being recorded and commits their offsets before the
partitions can go to another member; batches not recorded by then are given up
uncommitted, so the partitions' next owner (maybe this consumer again, from the
committed offsets) reads them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import asyncpg

from orchestrator.backoff import Backoff
from orchestrator.clock import SYSTEM_CLOCK, Clock, wait_for_event
from orchestrator.health import Liveness
from orchestrator.intake import Intake, Router
from orchestrator.settings import Settings
from orchestrator.sources import SourceContext, loop_stopped
from sources.kafka_config import (
    EMBEDDED_CONSUMER_OPTIONS,
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    KafkaError,
    TopicPartition,
    describe,
    describe_offsets,
    describe_partitions,
    make_consumer,
    session_options,
)
from sources.kafka_health import ConsumerHealth
from sources.kafka_logs import LogBook, records_at
from sources.kafka_messages import Batch, to_batch
from sources.kafka_recording import record_messages
from sources.kafka_stats import KafkaIntakeStats

log = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self.source._revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        self.source._assigned(assigned)


class KafkaSource:
    """The ``kafka`` event source (see the module docstring).

    ``consumer_options`` are extra aiokafka consumer arguments (e.g.
    ``session_timeout_ms``); they override :func:`session_options`. Up to
    ``pipeline`` batches are recorded at once (each in its own transaction, so
    PostgreSQL works on one while the next is prepared); offsets are committed
    in fetch order, only for batches whose predecessors are all recorded.
    ``poll_s`` bounds how long a reload waits to be seen; a failed batch is
    retried after ``retry_initial_s``, doubling up to ``retry_max_s``.
    ``use_topic_ids=False`` keys messages by counted log incarnations even
    when the broker gives topic ids (see :class:`LogBook`).
    """

    name = "kafka"

    def __init__(
        self,
        *,
        consumer_options: Mapping[str, Any] | None = None,
        pipeline: int = 3,
        poll_s: float = 0.5,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 5.0,
        commit_timeout_s: float = 30.0,
        use_topic_ids: bool = True,
    ) -> None:
        if pipeline < 1:
            raise ValueError("pipeline must be at least 1")
        self.consumer_options = dict(consumer_options or {})
        self.pipeline = pipeline
        self.poll_s = poll_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.commit_timeout_s = commit_timeout_s
        self.stats = KafkaIntakeStats()
        self.consumer: AIOKafkaConsumer | None = None
        self._ctx: SourceContext | None = None
        self._topics: tuple[str, ...] = ()
        self._subscribed: tuple[str, ...] = ()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._interrupt = asyncio.Event()
        """Set at a revocation or stop: batches waiting to retry give up."""
        self._commit_lock = asyncio.Lock()
        self._generation = 0
        self._broken_generation = -1
        self._inflight: deque[Batch] = deque()
        self._pending: dict[Any, int] = {}
        """Offsets recorded in PostgreSQL and not yet committed to Kafka."""
        self._task: asyncio.Task[None] | None = None
        self._listener = _Listener(self)
        self._logs = LogBook(use_topic_ids=use_topic_ids)
        # Partition bookkeeping of the current assignment (see _keys_ready):
        self._to_check: set[Any] = set()
        """Assigned, committed offset not yet compared with the high watermark."""
        self._suspect: dict[Any, str] = {}
        """Known to read a new log, with the reason; its log not looked up yet."""
        self._restart: set[Any] = set()
        """Reading a new log: to send to their beginning."""
        self._sought: set[Any] = set()
        """Sent back to their beginning: records fetched before that are dropped."""
        self._next: dict[Any, int] = {}
        """Per partition, the offset after the last one keyed (going back: a new log)."""
        self._health = ConsumerHealth()

    # -- Source protocol ------------------------------------------------------

    def setup(self, ctx: SourceContext) -> None:
        self._ctx = ctx

    def use_router(self, router: Router) -> None:
        topics = tuple(router.channels("kafka"))
        dataset_topic = self._dataset_topic
        if dataset_topic is not None and dataset_topic not in topics:
            topics = tuple(sorted((*topics, dataset_topic)))
        if topics != self._topics:
            self._topics = topics
            self._changed.set()

    @property
    def _dataset_topic(self) -> str | None:
        return self._ctx.settings.dataset_topic if self._ctx is not None else None

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    async def start(self) -> None:
        assert self._ctx is not None, "setup() first"
        if self._task is None:
            self._stopping.clear()
            self._interrupt.clear()
            self._task = asyncio.create_task(self._run(), name="kafka-intake")

    async def stop(self) -> None:
        """Let the batches being recorded finish and commit their offsets, then
        close the consumer. What was fetched and not recorded is not committed,
        so it is read again at the next start."""
        self._stopping.set()
        self._interrupt.set()
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            # The loop only fetches and hands batches over: cancelling it loses nothing.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drain()
        await self._close_consumer()

    # -- the consume loop -----------------------------------------------------

    @property
    def _settings(self) -> Settings:
        assert self._ctx is not None
        return self._ctx.settings

    @property
    def _intake(self) -> Intake:
        assert self._ctx is not None
        return self._ctx.intake

    def _backoff(self) -> Backoff:
        return Backoff(self.retry_initial_s, self.retry_max_s)

    @property
    def _clock(self) -> Clock:
        return self._ctx.clock if self._ctx is not None else SYSTEM_CLOCK

    @property
    def _liveness(self) -> Liveness | None:
        return self._ctx.liveness if self._ctx is not None else None

    async def _run(self) -> None:
        backoff = self._backoff()
        try:
            await self._consume(backoff)
        finally:
            self._health.idle(self._liveness)

    async def _consume(self, backoff: Backoff) -> None:
        while not self._stopping.is_set():
            # Comes round at least every poll_s (getmany's timeout) or backoff step.
            self._health.beat(self._liveness)
            try:
                if not self._topics:
                    await self._drain()
                    await self._close_consumer()
                    self._health.read()
                    self._changed.clear()
                    if not self._topics and not self._stopping.is_set():
                        self._health.idle(self._liveness)
                        await self._changed.wait()
                    continue
                consumer = await self._consumer_for(self._topics)
                if self._to_check or self._restart:
                    await self._check_partitions(consumer, set())
                fetched = await consumer.getmany(
                    timeout_ms=int(self.poll_s * 1000), max_records=self._settings.kafka_batch_max
                )
                # Taken before any await: the records belong to this generation.
                generation = self._generation
                if fetched:
                    ready = await self._keys_ready(consumer, fetched, generation)
                    if ready is None:
                        # Reassigned (or stopping) meanwhile: not recorded, not committed,
                        # so the partitions' next owner reads them again.
                        continue
                    fetched = ready
                if fetched:
                    batch = to_batch(
                        fetched, generation, self._logs.prefixes, self._settings.max_payload_bytes
                    )
                    batch.reads = self._logs.reads(fetched)
                    self._next.update(batch.offsets)
                    while len(self._inflight) >= self.pipeline:
                        oldest = self._inflight[0].task
                        assert oldest is not None
                        # Waiting on the database is not being stuck.
                        await asyncio.wait([oldest], timeout=self.poll_s)
                        self._health.beat(self._liveness)
                    self._inflight.append(batch)
                    batch.task = asyncio.create_task(self._record_batch(batch))
                self._health.report_lag(consumer, self._next)
                backoff.reset()
                self._health.read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self._health.failed()
                delay = backoff.next()
                if isinstance(exc, KafkaError):
                    log.warning("Kafka: %s; trying again in %.1fs", self.stats.last_error, delay)
                else:
                    log.exception("Kafka intake failed; trying again in %.1fs", delay)
                await wait_for_event(self._clock, self._stopping, delay)

    async def _consumer_for(self, topics: tuple[str, ...]) -> AIOKafkaConsumer:
        if self.consumer is None:
            options = {**session_options(self._settings), **self.consumer_options}
            consumer = make_consumer(self._settings, **options)
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self.consumer = consumer
            consumer.subscribe(list(topics), listener=self._listener)
            self._subscribed = topics
            log.info(
                "Kafka intake: group %s on %s reads %s",
                self._settings.kafka_group_id,
                describe(self._settings),
                ", ".join(topics),
            )
        elif topics != self._subscribed:
            # A rebalance follows; the listener lets the batches in flight finish first.
            self.consumer.subscribe(list(topics), listener=self._listener)
            self._subscribed = topics
            log.info("Kafka intake now reads %s", ", ".join(topics))
        return self.consumer

    async def _close_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        self._subscribed = ()
        if consumer is not None:
            self._generation += 1
            self._forget_partitions()
            await consumer.stop()
            self.stats.assigned = frozenset()
            self._health.forget_lag()

    # -- which log each partition reads -------------------------------------------

    async def not_ready(self) -> str | None:
        if stopped := loop_stopped(self._task, "the Kafka intake loop"):
            return stopped
        return self._health.not_ready(self._settings.health_stale_s, self.stats.last_error)

    def _forget_partitions(self) -> None:
        self._logs.forget()
        self._to_check.clear()
        self._suspect.clear()
        self._restart.clear()
        self._sought.clear()
        self._next.clear()

    async def _keys_ready(
        self, consumer: AIOKafkaConsumer, fetched: dict[Any, Any], generation: int
    ) -> dict[Any, Any] | None:
        """Make sure the log of every partition in ``fetched`` is known, so its
        records can be keyed; returns what is left to record of ``fetched``,
        or None when the partitions were reassigned (or the source stops) first.

        Cheap when nothing changed: a few dict lookups per partition. A broker
        or database error is retried here (the records are fetched: giving up
        would skip them) until it works or the partitions are reassigned.
        """
        for tp, records in fetched.items():
            expected = self._next.get(tp)
            if records and expected is not None and records[0].offset < expected:
                self._suspect[tp] = (
                    f"offsets went back from {expected} to {records[0].offset} while reading"
                )
        backoff = self._backoff()
        while True:
            if generation != self._generation or self._stopping.is_set():
                return None
            missing = {tp for tp in fetched if tp not in self._logs.prefixes}
            if not (missing or self._suspect or self._to_check or self._restart):
                break
            try:
                await self._check_partitions(consumer, missing)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff.next()
                log.warning(
                    "cannot look up the logs of Kafka partitions %s (%s); trying again in %.1fs",
                    describe_partitions(missing | set(self._suspect) | self._to_check),
                    self.stats.last_error,
                    delay,
                )
                await wait_for_event(self._clock, self._interrupt, delay)
        if not self._sought:
            return fetched
        sought, self._sought = self._sought, set()
        return {tp: records for tp, records in fetched.items() if tp not in sought}

    async def _check_partitions(self, consumer: AIOKafkaConsumer, extra: set[Any]) -> None:
        """Compare newly assigned partitions' committed offsets with their ends,
        look up the logs of those partitions, of ``extra`` and of the suspect
        ones, and send each partition that reads a new log to its beginning:
        its committed offset, if any, counts offsets of another log.

        Changes nothing once the partitions are reassigned meanwhile: what it
        found is about the previous assignment."""
        generation = self._generation
        fresh = set(self._to_check)
        if fresh:
            tps = sorted(fresh)
            ends = await consumer.end_offsets(tps)
            committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))
            past = {
                tp: (offset, ends[tp])
                for tp, offset in zip(tps, committed, strict=True)
                if offset is not None and offset > ends[tp]
            }
            if past:
                # Some brokers under-report the end (Tansu: the start of the last
                # batch + 1): a record just before the committed offset shows the
                # log still reaches it.
                reach = await records_at(self._settings, {tp: c - 1 for tp, (c, _) in past.items()})
                past = {tp: found for tp, found in past.items() if reach[tp] is None}
            if generation != self._generation:
                return
            for tp, (offset, end) in past.items():
                self._past_end(tp, offset, end)
            self._to_check -= fresh
        wanted = fresh | extra | set(self._suspect)
        if wanted:
            db = self._intake.engine.db
            renewed = await self._logs.learn(
                consumer, db, self._settings, wanted, suspect=self._suspect
            )
            if generation != self._generation:
                self._logs.forget()
                return
            self._restart |= renewed
            self._suspect.clear()
            self.stats.new_logs = self._logs.new_logs
        if self._restart:
            tps = sorted(self._restart)
            starts = await consumer.beginning_offsets(tps)
            if generation != self._generation:
                return
            for tp in tps:
                consumer.seek(tp, starts[tp])
                # Records fetched before the seek are not recorded (nor their offsets committed).
                self._sought.add(tp)
                self._next.pop(tp, None)
            self._restart.clear()

    def _past_end(self, tp: Any, committed: int, end: int) -> None:
        self.stats.committed_past_end += 1
        log.warning(
            "Kafka %s[%d]: the group's committed offset %d is past the high watermark %d; "
            "the log started again (a topic created again, a broker that lost its data): "
            "reading it from its beginning",
            tp.topic,
            tp.partition,
            committed,
            end,
        )
        self._restart.add(tp)
        self._suspect[tp] = f"the committed offset {committed} is past its end {end}"

    async def _drain(self) -> None:
        """Wait for every batch in flight, then commit what was recorded."""
        tasks = [b.task for b in self._inflight if b.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        await self._commit_recorded()

    # -- recording a batch ------------------------------------------------------

    async def _record_batch(self, batch: Batch) -> None:
        backoff = self._backoff()
        while batch.state == "recording":
            if batch.generation != self._generation:
                batch.state = "dropped"
                self.stats.dropped_batches += 1
                log.info(
                    "Kafka partitions were reassigned before %d fetched messages were "
                    "recorded; they are read again from the committed offsets",
                    batch.size,
                )
                break
            try:
                await record_messages(
                    self._intake,
                    batch.events,
                    batch.letters,
                    batch.reads,
                    self._dataset_topic,
                    self.stats,
                )
            except Exception as exc:
                delay = backoff.next()
                self._ingest_failed(exc, batch.size, backoff.failures, delay)
                if self._interrupt.is_set():
                    batch.state = "dropped"
                    self.stats.dropped_batches += 1
                    log.warning(
                        "giving up %d unrecorded Kafka messages (stopping or rebalancing); "
                        "their offsets are not committed, so they are read again",
                        batch.size,
                    )
                    break
                await wait_for_event(self._clock, self._interrupt, delay)
            else:
                batch.state = "recorded"
                self.stats.batches += 1
                self.stats.messages += batch.size
        await self._commit_recorded()

    def _ingest_failed(self, exc: Exception, count: int, attempt: int, delay: float) -> None:
        self.stats.ingest_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        down = isinstance(
            exc, OSError | asyncpg.PostgresConnectionError | asyncpg.InterfaceError
        ) or getattr(exc, "sqlstate", "") in ("55000", "57P01", "57P02", "57P03", "53300")
        what = "PostgreSQL is unavailable" if down else "recording failed"
        log.warning(
            "%s: %d Kafka messages are not recorded and their offsets not committed "
            "(attempt %d, trying again in %.2fs): %s",
            what,
            count,
            attempt,
            delay,
            self.stats.last_error,
            exc_info=not down,
        )

    # -- committing offsets -----------------------------------------------------

    async def _commit_recorded(self) -> None:
        """Commit the offsets of the recorded batches at the head of the queue,
        in fetch order: never past a batch that is still being recorded, and
        never past one that was given up."""
        async with self._commit_lock:
            while self._inflight and self._inflight[0].state != "recording":
                batch = self._inflight.popleft()
                if batch.state == "dropped":
                    self._broken_generation = batch.generation
                elif batch.generation not in (self._broken_generation,):
                    self._pending.update(batch.offsets)
            if self._pending and self.consumer is not None:
                await self._commit(self.consumer)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        offsets = dict(self._pending)
        try:
            await asyncio.wait_for(consumer.commit(offsets), self.commit_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.commit_failures += 1
            log.warning(
                "Kafka offsets %s not committed (%s: %s); the events are recorded, so a "
                "redelivery starts nothing new",
                describe_offsets(offsets),
                type(exc).__name__,
                exc,
            )
            if isinstance(exc, KafkaError):
                # Rebalanced, or refused: these partitions may be another member's now.
                self._pending.clear()
        else:
            self.stats.commits += 1
            for tp, offset in offsets.items():
                if self._pending.get(tp) == offset:
                    del self._pending[tp]

    async def _revoked(self, revoked: set[Any]) -> None:
        # Runs before the partitions can go to another member: batches being
        # recorded finish and their offsets are committed; batches not started
        # yet, or waiting to retry, are given up (not committed).
        self._generation += 1
        self._forget_partitions()
        self.stats.rebalances += 1
        self._interrupt.set()
        try:
            await self._drain()
        finally:
            if not self._stopping.is_set():
                self._interrupt.clear()
        self._pending.clear()
        self._health.forget_lag()
        if revoked:
            log.info("Kafka partitions revoked: %s", describe_partitions(revoked))

    def _assigned(self, assigned: set[Any]) -> None:
        # The consumer resumes each partition at its committed offset (the
        # earliest one for a new group); the consume loop compares it with the
        # high watermark and looks the partitions' logs up before keying any
        # of their records (not here: an error here could not be retried).
        self._to_check |= set(assigned)
        self.stats.assigned = frozenset((tp.topic, tp.partition) for tp in assigned)
        log.info("Kafka partitions assigned: %s", describe_partitions(assigned) or "none")


__all__ = [
    "EMBEDDED_CONSUMER_OPTIONS",
    "KafkaIntakeStats",
    "KafkaSource",
    "TopicPartition",
    "session_options",
]

"""Which log a Kafka message came from, so its dedup key names it completely.

Offsets identify a message only within one log. A topic deleted and created
again, or the in-memory log of a restarted embedded broker, starts again at
offset 0; a key of topic/partition/offset alone would take its new messages
for redeliveries of old ones and drop them. So a key is
``kafka:{log}:{topic}:{partition}:{offset}``, where ``{log}`` is

- ``{cluster id}/{topic id}`` when the broker gives topic ids (Metadata v10+:
  Kafka 2.8 and later, the embedded Tansu broker), a UUID the broker makes
  when it creates the topic; or
- ``{cluster id}/log{n}`` otherwise: incarnation ``n`` of the partition's log,
  kept in PostgreSQL (``kafka_partition_logs``). The intake starts a new one
  when the log is plainly not the one it read before: its end or its start
  offset went back, its first record is another one, the group's committed
  offset is past its end, or offsets went back while reading. How far each
  log was read is noted in the transaction that records the messages.

(``-`` stands for a cluster id the broker does not give.) A redelivery from
the same log gets the same key. The log is looked up once per partition and
assignment (:class:`LogBook`); each message only joins a cached prefix and its
offset.

Broker answers are checked where being wrong would cost runs: some brokers
under-report the high watermark (Tansu gives the start of the last batch plus
one), so an end that seems to have gone back is confirmed by reading
(:func:`records_at`) before it counts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.clock import monotonic
from orchestrator.settings import Settings
from orchestrator.store import Database
from sources.kafka_config import AIOKafkaConsumer, OffsetOutOfRangeError, make_consumer
from sources.kafka_metadata import topic_ids
from sources.queries import SQL

log = logging.getLogger(__name__)

#: How long :func:`records_at` waits for a record before saying there is none.
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class LogView:
    """What one partition's log looks like."""

    start: int
    """The log start offset (earliest offset still there)."""
    end: int
    """The offset of the next message (the high watermark)."""
    first_offset: int | None = None
    """Offset of the first record from ``start``; None when empty or not read."""
    first_record: str | None = None
    """Its :func:`fingerprint`."""


def new_log_reason(known: LogView, now: LogView) -> str | None:
    """Why ``now`` cannot be the log ``known`` describes, or None when it can be.

    Within one log, the start offset and the end never go back, and the first
    record only moves forward (retention, compaction) without changing at a
    given offset."""
    if now.end < known.end:
        return f"its end went back from offset {known.end} to {now.end}"
    if now.start < known.start:
        return f"its start went back from offset {known.start} to {now.start}"
    if now.first_offset is not None and known.first_offset is not None:
        if now.first_offset < known.first_offset:
            return (
                f"its first record is at offset {now.first_offset}, "
                f"before the {known.first_offset} seen earlier"
            )
        if now.first_offset == known.first_offset and now.first_record != known.first_record:
            return f"its first record (offset {now.first_offset}) is not the one seen earlier"
    return None


def merged(known: LogView, now: LogView) -> LogView:
    """``known`` updated with ``now`` (the same log): offsets only move forward."""
    first = (now.first_offset, now.first_record)
    if now.first_offset is None:
        first = (known.first_offset, known.first_record)
    return LogView(max(known.start, now.start), max(known.end, now.end), *first)


def fingerprint(record: Any) -> str:
    """A record's timestamp and a hash of its key and value."""
    digest = hashlib.blake2b(digest_size=12)
    for part in (record.key, record.value):
        digest.update(b"\x00" if part is None else b"\x01%d:" % len(part))
        digest.update(part or b"")
    return f"{record.timestamp}:{digest.hexdigest()}"


def key_prefix(log_name: str, topic: str, partition: int) -> str:
    """Everything of a message's dedup key but its offset."""
    return f"kafka:{log_name}:{topic}:{partition}:"


@dataclass(frozen=True, slots=True)
class LogRead:
    """What one batch read from one partition keyed by incarnation."""

    cluster: str
    tp: Any
    incarnation: int
    end: int
    """The offset after the last record read."""
    first_offset: int
    first_record: str
    """:func:`fingerprint` of the batch's first record."""


class LogBook:
    """The dedup-key prefix of each assigned partition (see the module docstring).

    ``use_topic_ids=False`` ignores the topic ids a broker gives and counts
    incarnations, as for a broker that gives none.
    """

    def __init__(self, *, use_topic_ids: bool = True) -> None:
        self.use_topic_ids = use_topic_ids
        self.prefixes: dict[Any, str] = {}
        """TopicPartition -> key prefix of the partitions looked up since :meth:`forget`."""
        self.new_logs = 0
        """Partitions found reading another log than before."""
        self.cluster = ""
        """The cluster id ('' when the broker gives none)."""
        self.counted: dict[Any, int] = {}
        """TopicPartition -> incarnation, for the partitions keyed by incarnation."""
        self._last: dict[Any, str] = {}
        """The last prefix of each partition ever looked up (kept across assignments)."""

    def forget(self) -> None:
        """The assignment changed: look every partition up again."""
        self.prefixes.clear()
        self.counted.clear()

    def reads(self, fetched: Mapping[Any, Any]) -> list[LogRead]:
        """What a batch read from partitions keyed by incarnation (nothing for
        partitions with topic ids): see :func:`note_reads`."""
        if not self.counted:
            return []
        out = []
        for tp, records in fetched.items():
            incarnation = self.counted.get(tp)
            if incarnation is not None and records:
                first = records[0]
                end = records[-1].offset + 1
                out.append(
                    LogRead(self.cluster, tp, incarnation, end, first.offset, fingerprint(first))
                )
        return out

    async def learn(
        self,
        consumer: AIOKafkaConsumer,
        db: Database,
        settings: Settings,
        tps: Iterable[Any],
        *,
        suspect: Mapping[Any, str] | None = None,
    ) -> set[Any]:
        """Look up the log of each partition of ``tps`` and cache its key prefix;
        returns the partitions found reading another log than before.

        ``suspect`` names partitions already known to read a new log, with the
        reason (offsets went back, committed offset past the end). Raises on
        broker or database errors, leaving those partitions to look up again.
        """
        wanted = sorted(set(tps))
        if not wanted:
            return set()
        suspect = suspect or {}
        # aiokafka's own Metadata requests carry no topic ids: ask through its client.
        ids = await topic_ids(consumer._client, sorted({tp.topic for tp in wanted}))
        cluster = self.cluster = ids.cluster_id or ""
        renewed: set[Any] = set()
        counted: list[Any] = []
        for tp in wanted:
            topic_id = ids.topic_ids[tp.topic] if self.use_topic_ids else None
            if topic_id is None:
                counted.append(tp)
                continue
            self.counted.pop(tp, None)
            prefix = key_prefix(f"{cluster or '-'}/{topic_id}", tp.topic, tp.partition)
            last = self._last.get(tp)
            if last is not None and last != prefix:
                renewed.add(tp)
                self.new_logs += 1
                log.warning(
                    "Kafka %s[%d] is a new log (topic id %s): its messages get new keys",
                    tp.topic,
                    tp.partition,
                    topic_id,
                )
            self.prefixes[tp] = self._last[tp] = prefix
        if counted:
            incarnations, started = await self._incarnations(
                consumer, db, settings, cluster, counted, suspect
            )
            renewed |= started
            for tp, incarnation in incarnations.items():
                self.counted[tp] = incarnation
                prefix = key_prefix(f"{cluster or '-'}/log{incarnation}", tp.topic, tp.partition)
                self.prefixes[tp] = self._last[tp] = prefix
        return renewed

    async def _incarnations(
        self,
        consumer: AIOKafkaConsumer,
        db: Database,
        settings: Settings,
        cluster: str,
        tps: list[Any],
        suspect: Mapping[Any, str],
    ) -> tuple[dict[Any, int], set[Any]]:
        """The incarnation each partition reads, and those started anew."""
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        topics = [tp.topic for tp in tps]
        partitions = [tp.partition for tp in tps]
        async with db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.kafka_logs_current, cluster, topics, partitions)
        known = {
            (r["topic"], r["partition"]): (
                r["incarnation"],
                LogView(r["log_start"], r["log_end"], r["first_offset"], r["first_record"]),
            )
            for r in rows
        }
        firsts = await records_at(settings, {tp: starts[tp] for tp in tps if ends[tp] > starts[tp]})
        # Where the broker says the log ends before where it was read to, see
        # whether it still reaches there (some brokers under-report the end).
        short = {
            tp: k[1].end - 1
            for tp in tps
            if (k := known.get((tp.topic, tp.partition))) and ends[tp] < k[1].end
        }
        reach = await records_at(settings, short)
        started: list[tuple[Any, int, LogView, str]] = []
        checked: list[tuple[Any, int, LogView]] = []
        for tp in tps:
            end = ends[tp]
            if (seen := reach.get(tp)) is not None:
                end = max(end, seen[0] + 1)
            view = LogView(starts[tp], end, *(firsts.get(tp) or (None, None)))
            before = known.get((tp.topic, tp.partition))
            if before is None:
                started.append((tp, 1, view, "first read"))
                continue
            incarnation, was = before
            reason = suspect.get(tp) or new_log_reason(was, view)
            if reason is None:
                checked.append((tp, incarnation, merged(was, view)))
                continue
            started.append((tp, incarnation + 1, view, reason))
            self.new_logs += 1
            log.warning(
                "Kafka %s[%d] is not the log read before (%s): reading it from its start "
                "as incarnation %d, its messages get new keys",
                tp.topic,
                tp.partition,
                reason,
                incarnation + 1,
            )
        async with db.transaction() as conn:
            if started:
                # Two members deciding the same incarnation at once both use it.
                await conn.execute(SQL.kafka_logs_start, cluster, *_columns(started, True))
            if checked:
                await conn.execute(SQL.kafka_logs_checked, cluster, *_columns(checked, False))
        incarnations = {tp: n for tp, n, *_ in started + checked}
        return incarnations, {tp for tp, n, *_ in started if n > 1}


async def note_reads(conn: Any, reads: list[LogRead]) -> None:
    """Record, in the transaction that records the batch, how far each log was
    read (and its first record when the batch began at the log's start), so
    the next look-up knows the log at least that well. The reads of one batch
    are of one cluster."""
    await conn.execute(
        SQL.kafka_logs_read,
        reads[0].cluster,
        [r.tp.topic for r in reads],
        [r.tp.partition for r in reads],
        [r.incarnation for r in reads],
        [r.end for r in reads],
        [r.first_offset for r in reads],
        [r.first_record for r in reads],
    )


def _columns(rows: list[Any], with_reason: bool) -> list[list[Any]]:
    columns: list[list[Any]] = [
        [tp.topic for tp, *_ in rows],
        [tp.partition for tp, *_ in rows],
        [row[1] for row in rows],
        [row[2].start for row in rows],
        [row[2].end for row in rows],
        [row[2].first_offset for row in rows],
        [row[2].first_record for row in rows],
    ]
    if with_reason:
        columns.append([row[3] for row in rows])
    return columns


async def records_at(
    settings: Settings, offsets: Mapping[Any, int]
) -> dict[Any, tuple[int, str] | None]:
    """Per partition, the first record at or after the given offset, as
    (offset, :func:`fingerprint`), read by a consumer outside the group; None
    when there is none: the offset is past the log's end, or nothing came
    within :data:`READ_TIMEOUT_S` (brokers that answer a fetch past the end
    with nothing rather than an error)."""
    if not offsets:
        return {}
    consumer = make_consumer(
        settings,
        group_id=None,
        auto_offset_reset="none",
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=65_536,
    )
    await consumer.start()
    found: dict[Any, tuple[int, str] | None] = {}
    try:
        consumer.assign(sorted(offsets))
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
        deadline = monotonic() + READ_TIMEOUT_S
        while len(found) < len(offsets) and monotonic() < deadline:
            try:
                fetched = await consumer.getmany(timeout_ms=100)
            except OffsetOutOfRangeError as exc:
                out_of_range = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
                for tp in out_of_range:
                    found[tp] = None
                    consumer.pause(tp)
                continue
            for tp, records in fetched.items():
                if records and tp not in found:
                    found[tp] = (records[0].offset, fingerprint(records[0]))
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return {tp: found.get(tp) for tp in offsets}


__all__ = [
    "LogBook",
    "LogRead",
    "LogView",
    "fingerprint",
    "key_prefix",
    "merged",
    "new_log_reason",
    "note_reads",
    "records_at",
]

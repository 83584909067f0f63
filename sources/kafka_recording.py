"""Recording fetched Kafka messages in PostgreSQL (:mod:`sources.kafka`):
a batch in one transaction, or message by message when PostgreSQL refuses
something in it for good."""

from __future__ import annotations

import asyncpg
import orjson

from orchestrator.datasets import Datasets, updates_from_messages
from orchestrator.intake import Accepted, DeadLetter, Event, Intake
from sources.kafka_logs import LogRead, note_reads
from sources.kafka_messages import raw_text
from sources.kafka_stats import KafkaIntakeStats


async def record_messages(
    intake: Intake,
    events: list[Event],
    letters: list[DeadLetter],
    reads: list[LogRead],
    dataset_topic: str | None,
    stats: KafkaIntakeStats,
) -> None:
    """Record one fetched batch in one transaction: its events, dead letters,
    dataset updates and the logs its partitions read; counted in ``stats``."""
    refused = 0
    # Messages on the dataset topic are updates, recorded in the same commit.
    events, updates, bad = updates_from_messages(events, dataset_topic)
    letters = letters + bad
    datasets = Datasets(intake.engine)
    try:
        if reads or updates:
            async with intake.engine.unit() as (conn, notices):
                answers = await intake.ingest_in(
                    conn, events, dead_letters=letters, actor="kafka", notices=notices
                )
                if updates:
                    answers += await datasets.record_in(
                        conn, updates, actor="kafka", notices=notices
                    )
                if reads:
                    await note_reads(conn, reads)
        else:
            answers = await intake.ingest(events, dead_letters=letters, actor="kafka")
    except asyncpg.DataError:
        # Something in the batch PostgreSQL refuses for good: find it, one by one.
        answers, refused = await _record_one_by_one(intake, events, letters)
        if updates:
            answers += await datasets.record(updates, actor="kafka")
        if reads:
            async with intake.engine.db.transaction() as conn:
                await note_reads(conn, reads)
    for answer in answers:
        if answer.duplicate:
            stats.duplicates += 1
        else:
            stats.runs += len(answer.run_ids)
            stats.dead_letters += len(answer.dead_letters)
    stats.dead_letters += len(letters) + refused


async def _record_one_by_one(
    intake: Intake, events: list[Event], letters: list[DeadLetter]
) -> tuple[list[Accepted], int]:
    """Each event in its own transaction; those PostgreSQL refuses become
    dead letters. Each step is idempotent, so a failure part-way is retried
    as a whole."""
    if letters:
        await intake.ingest([], dead_letters=letters, actor="kafka")
    answers: list[Accepted] = []
    refused = 0
    for event in events:
        try:
            answers += await intake.ingest([event], actor="kafka")
        except asyncpg.DataError as exc:
            letter = DeadLetter(
                "kafka",
                event.channel,
                event.dedup_key,
                f"PostgreSQL cannot store this message: {exc}",
                raw=raw_text(orjson.dumps(event.payload)),
                headers=event.headers,
                meta=event.meta,
            )
            await intake.ingest([], dead_letters=[letter], actor="kafka")
            refused += 1
    return answers, refused

"""Consumed Kafka records as intake items: an :class:`Event` per usable
message, a :class:`DeadLetter` (with the start of the raw message) per poison
one, gathered per ``getmany`` result into a :class:`Batch`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from orchestrator.intake import DeadLetter, Event
from sources.kafka_logs import LogRead

#: How much of a poison message is kept in its dead letter.
RAW_LIMIT = 8192


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    # PostgreSQL text and jsonb cannot hold NUL.
    return value.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def raw_text(value: bytes) -> str:
    text = _text(value[:RAW_LIMIT]) or ""
    if len(value) > RAW_LIMIT:
        text += f"... [truncated: {len(value)} bytes in all]"
    return text


def message_event(record: Any, key_prefix: str, max_bytes: int) -> Event | DeadLetter:
    """A consumed record as an :class:`Event`, or a :class:`DeadLetter` naming
    why it cannot be one. ``key_prefix`` names its log, topic and partition
    (:func:`sources.kafka_logs.key_prefix`); a value over ``max_bytes`` is
    refused. The event keeps the value as its ``raw`` payload text."""
    # Straight-line: this runs for every message consumed.
    topic, offset = record.topic, record.offset
    key = f"{key_prefix}{offset}"
    pairs = record.headers
    headers = {k: _text(v) or "" for k, v in pairs} if pairs else {}
    meta = {
        "topic": topic,
        "partition": record.partition,
        "offset": offset,
        "key": _text(record.key),
        "timestamp": record.timestamp,
    }
    value: bytes | None = record.value
    if value is None:
        reason = "message has no value (a tombstone); expected a JSON document"
    elif len(value) > max_bytes:
        reason = (
            f"message is {len(value)} bytes, over the limit of {max_bytes} bytes "
            "(ORCHESTRATOR_MAX_PAYLOAD_BYTES)"
        )
    else:
        try:
            payload = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            reason = _not_json(value, exc)
        else:
            if b"\\u0000" not in value or b"\\u0000" not in orjson.dumps(payload):
                return Event("kafka", topic, key, payload, headers, meta, actor="kafka", raw=value)
            reason = "message contains a NUL character (\\u0000), which PostgreSQL cannot store"
    raw = None if value is None else raw_text(value)
    return DeadLetter("kafka", topic, key, reason, raw=raw, headers=headers, meta=meta)


def _not_json(value: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"message is not UTF-8 text: {bad}"
    return f"message is not JSON: {exc}"


@dataclass(eq=False)
class Batch:
    """One ``getmany`` result on its way into PostgreSQL."""

    generation: int
    events: list[Event]
    letters: list[DeadLetter]
    offsets: dict[Any, int]
    """Per partition, the offset to commit once this batch (and every earlier one) is recorded."""
    size: int
    reads: list[LogRead] = field(default_factory=list)
    """How far it read partitions keyed by incarnation (noted with the batch)."""
    state: str = "recording"  # -> "recorded" | "dropped"
    task: asyncio.Task[None] | None = None


def to_batch(
    fetched: Mapping[Any, Sequence[Any]],
    generation: int,
    prefixes: Mapping[Any, str],
    max_bytes: int,
) -> Batch:
    events: list[Event] = []
    letters: list[DeadLetter] = []
    offsets: dict[Any, int] = {}
    size = 0
    # Partition order: two consumers recording overlapping batches (during a
    # rebalance) insert the same keys in the same order, so they cannot deadlock.
    for tp in sorted(fetched):
        records = fetched[tp]
        if not records:
            continue
        size += len(records)
        offsets[tp] = records[-1].offset + 1
        prefix = prefixes[tp]
        for record in records:
            item = message_event(record, prefix, max_bytes)
            if isinstance(item, Event):
                events.append(item)
            else:
                letters.append(item)
    return Batch(generation, events, letters, offsets, size)

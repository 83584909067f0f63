"""Publishing JSON messages to Kafka (``orchestrator publish``, tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings
from sources.kafka_config import KafkaError, describe, make_producer


async def publish(
    settings: Settings, topic: str, values: Sequence[Any], key: str | bytes | None = None
) -> list[tuple[int, int]]:
    """Publish each value as a JSON message on ``topic``; returns (partition,
    offset) of each, once the broker has acknowledged them all.

    Raises :class:`KafkaPublishError` naming the broker when it cannot."""
    encoded_key = key.encode() if isinstance(key, str) else key
    try:
        encoded = [orjson.dumps(value) for value in values]
    except TypeError as exc:
        raise KafkaPublishError(f"cannot encode a message as JSON: {exc}") from None
    producer = make_producer(settings)
    try:
        await producer.start()
        futures = [await producer.send(topic, value, key=encoded_key) for value in encoded]
        sent = await asyncio.gather(*futures)
    except KafkaError as exc:
        raise KafkaPublishError(
            f"cannot publish to topic {topic!r} at {describe(settings)}: {exc}"
        ) from None
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in sent]


class KafkaPublishError(OrchestratorError):
    """Messages could not be published (broker unreachable, topic refused, ...)."""

"""A Kafka message's dedup key names the log it came from.

The embedded broker keeps its log in memory: after a restart (as after
``orchestrator dev`` restarts), a topic created again starts at offset 0, and a
new message at an offset seen before must start its run, not pass for a
redelivery. A redelivery from the same log still starts nothing. Real Tansu
brokers (one per test, restarted in the test) and a real PostgreSQL.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from eventually import eventually
from test_kafka_intake import (
    all_committed,
    committed,
    flow,
    orchestrator,
    produce,
    rows,
)

from orchestrator.settings import Settings
from sources.kafka import KafkaSource
from sources.kafka_config import TopicPartition, make_consumer


def order(order_id: str) -> bytes:
    return orjson.dumps({"order_id": order_id})


async def order_ids(db_url: str) -> list[str]:
    found = await rows(db_url, "SELECT params->>'order_id' AS o FROM runs ORDER BY id")
    return [r["o"] for r in found]


async def dedup_keys(db_url: str) -> list[str]:
    return [r["k"] for r in await rows(db_url, "SELECT dedup_key AS k FROM events ORDER BY id")]


async def an_order_before_and_after_a_restart(
    db_url: str, own_kafka: Any, source: KafkaSource
) -> tuple[str, Settings]:
    """A-1 at orders[2]@0; the broker restarts; B-2 at orders[2]@0 of the new
    log. The same intake (same process, same group) reads both."""
    env = own_kafka.env
    topic = await env.create_topic("orders", partitions=3)
    settings = env.settings()
    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    async with orchestrator(settings, db_url, [spec], source):
        assert await produce(settings, topic, [(2, order("A-1"))]) == [(2, 0)]
        await eventually(
            lambda: all_committed(settings, topic, {2: 1}), timeout=30, what="A-1 committed"
        )
        await own_kafka.restart()
        await env.create_topic("orders", partitions=3)
        assert await produce(settings, topic, [(2, order("B-2"))]) == [(2, 0)], "offset 0 again"
        await eventually(
            lambda: all_committed(settings, topic, {2: 1}), timeout=60, what="B-2 committed"
        )
    return topic, settings


async def redelivered_to_a_second_group(db_url: str, own_kafka: Any, **source: Any) -> KafkaSource:
    """Every message of the current log read again by another consumer group."""
    env = own_kafka.env
    topic = env.topic("orders")
    again = env.settings(group="second")
    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    second = KafkaSource(consumer_options=env.consumer_options, **source)
    async with orchestrator(again, db_url, [spec], second):
        await eventually(
            lambda: all_committed(again, topic, {2: 1}), timeout=30, what="second group"
        )
    return second


@pytest.mark.timeout(120)
async def test_a_new_message_at_an_offset_seen_before_a_broker_restart_starts_its_run(
    db_url: str, own_kafka: Any
) -> None:
    source = KafkaSource(consumer_options=own_kafka.env.consumer_options)
    topic, _ = await an_order_before_and_after_a_restart(db_url, own_kafka, source)
    assert await order_ids(db_url) == ["A-1", "B-2"]
    first, second = await dedup_keys(db_url)
    # Same topic, partition and offset; another log (topic id), so another key.
    assert first != second
    assert first.startswith("kafka:tansu_cluster/") and first.endswith(f":{topic}:2:0")
    assert second.startswith("kafka:tansu_cluster/") and second.endswith(f":{topic}:2:0")
    assert source.stats.new_logs == 3, "each partition of the topic reads a new log"

    # Read again from the same (new) log: the same key, nothing new.
    again = await redelivered_to_a_second_group(db_url, own_kafka)
    assert again.stats.duplicates == 1 and again.stats.runs == 0
    assert await order_ids(db_url) == ["A-1", "B-2"]


@pytest.mark.timeout(120)
async def test_without_topic_ids_a_restarted_log_is_a_new_incarnation(
    db_url: str, own_kafka: Any
) -> None:
    # As with a broker that gives no topic ids: the intake counts incarnations.
    source = KafkaSource(consumer_options=own_kafka.env.consumer_options, use_topic_ids=False)
    topic, _ = await an_order_before_and_after_a_restart(db_url, own_kafka, source)
    assert await order_ids(db_url) == ["A-1", "B-2"]
    assert await dedup_keys(db_url) == [
        f"kafka:tansu_cluster/log1:{topic}:2:0",
        f"kafka:tansu_cluster/log2:{topic}:2:0",
    ]
    # Partitions 0 and 1 were empty before and after: nothing tells their logs apart.
    assert source.stats.new_logs == 1
    logs = await incarnations(db_url, topic, 2)
    assert [i for i, _ in logs] == [1, 2]
    assert logs[1][1].startswith("its ")  # its high watermark or its first record differs

    again = await redelivered_to_a_second_group(db_url, own_kafka, use_topic_ids=False)
    assert again.stats.duplicates == 1 and again.stats.runs == 0
    assert await order_ids(db_url) == ["A-1", "B-2"]
    assert await incarnations(db_url, topic, 2) == logs, "the same log: no new incarnation"


async def incarnations(db_url: str, topic: str, partition: int) -> list[tuple[int, str]]:
    found = await rows(
        db_url,
        "SELECT incarnation, reason FROM kafka_partition_logs"
        " WHERE topic = $1 AND partition = $2 ORDER BY incarnation",
        topic,
        partition,
    )
    return [(r["incarnation"], r["reason"]) for r in found]


@pytest.mark.parametrize("use_topic_ids", [True, False])
async def test_a_committed_offset_past_the_end_is_reported_and_the_log_read_from_its_start(
    db_url: str, kafka_env: Any, caplog: pytest.LogCaptureFixture, use_topic_ids: bool
) -> None:
    # The group's offsets survived but the log started again: committed 5, end 2.
    topic = await kafka_env.create_topic("restarted", partitions=2)
    settings = kafka_env.settings()
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 1)
        consumer.assign([tp])
        await consumer.commit({tp: 5})
    finally:
        await consumer.stop()
    # One at a time: Tansu reports the end of a partition as the start of its last batch + 1.
    sent = [await produce(settings, topic, [m]) for m in [(1, order("N-1")), (1, order("N-2"))]]
    sent.append(await produce(settings, topic, [(0, order("Z"))]))
    assert sent == [[(1, 0)], [(1, 1)], [(0, 0)]]

    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    source = KafkaSource(consumer_options=kafka_env.consumer_options, use_topic_ids=use_topic_ids)
    with caplog.at_level(logging.WARNING, logger="sources.kafka"):
        async with orchestrator(settings, db_url, [spec], source):
            await eventually(
                lambda: all_committed(settings, topic, {0: 1, 1: 2}), timeout=30, what="committed"
            )
    assert sorted(await order_ids(db_url)) == ["N-1", "N-2", "Z"]
    assert source.stats.committed_past_end == 1
    [warning] = [r for r in caplog.records if "past the high watermark" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert f"{topic}[1]" in warning.getMessage()
    assert "committed offset 5 is past the high watermark 2" in warning.getMessage()
    assert await committed(settings, topic, [0, 1]) == {0: 1, 1: 2}


async def test_an_intake_restarted_after_a_batch_reads_the_same_log(
    db_url: str, kafka_env: Any
) -> None:
    # Tansu reports the end of this partition as 1 (the start of its last batch
    # + 1) while the group has committed 3: neither a log that started again nor
    # a new incarnation, which would record the batch again under new keys.
    topic = await kafka_env.create_topic("batched")
    settings = kafka_env.settings()
    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    assert await produce(settings, topic, [(0, order(f"B-{i}")) for i in range(3)]) == [
        (0, 0),
        (0, 1),
        (0, 2),
    ]
    first = KafkaSource(consumer_options=kafka_env.consumer_options, use_topic_ids=False)
    async with orchestrator(settings, db_url, [spec], first):
        await eventually(lambda: all_committed(settings, topic, {0: 3}), timeout=30, what="3")
    [before] = await rows(db_url, "SELECT max(checked_at) AS at FROM kafka_partition_logs")

    second = KafkaSource(consumer_options=kafka_env.consumer_options, use_topic_ids=False)
    async with orchestrator(settings, db_url, [spec], second):

        async def looked_up_again() -> bool:
            [row] = await rows(db_url, "SELECT max(checked_at) AS at FROM kafka_partition_logs")
            return bool(row["at"] > before["at"])

        await eventually(looked_up_again, timeout=30, what="the partition looked up again")
        await produce(settings, topic, [(0, order("C-3"))])
        await eventually(lambda: all_committed(settings, topic, {0: 4}), timeout=30, what="4")
    assert await order_ids(db_url) == ["B-0", "B-1", "B-2", "C-3"]
    assert second.stats.committed_past_end == 0 and second.stats.new_logs == 0
    assert await incarnations(db_url, topic, 0) == [(1, "first read")]

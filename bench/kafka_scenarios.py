"""Kafka intake scenario: kafka_intake.

The events are produced before the clock starts; the clock runs from starting
the source (so the consumer group join is included) until every event is
recorded in PostgreSQL with its run. Runs are created, not executed
(``worker_slots=0``). Kafka is ``ORCHESTRATOR_KAFKA_BOOTSTRAP`` when set, else
the embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from bench.ceilings import against, intake_ceiling
from bench.harness import Figure, scratch_database
from bench.registry import option, scenario
from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.sources import SourceContext
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.kafka import EMBEDDED_CONSUMER_OPTIONS, KafkaSource
from sources.kafka_broker import EmbeddedKafka, ensure_topics
from sources.kafka_config import make_producer
from sources.models import KafkaTrigger

PARTITIONS = 6

option("--events", type=int, default=100_000, help="kafka_intake: events produced (default 100000)")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        expected = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(expected) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return sizes


option(
    "--kafka-max-records",
    type=_sizes,
    default=None,
    metavar="N,N,...",
    help="kafka_intake: also measure with these batch sizes (records fetched and recorded per "
    "transaction, e.g. 500,2000,5000): one sweep figure per setting",
)
option(
    "--kafka-fetch-bytes",
    type=_sizes,
    default=None,
    metavar="B,B,...",
    help="kafka_intake: also measure with these fetch sizes (most bytes per partition per "
    "fetch, e.g. 262144,1048576,4194304), combined with each batch size",
)


@contextlib.asynccontextmanager
async def _kafka() -> AsyncIterator[tuple[str, bool]]:
    """(bootstrap, embedded?)"""
    external = os.environ.get("ORCHESTRATOR_KAFKA_BOOTSTRAP")
    if external:
        yield external, False
        return
    async with EmbeddedKafka() as broker:
        yield broker.bootstrap, True


def _payload(i: int) -> dict[str, Any]:
    # About 1 KB of JSON, shaped like an order.
    return {
        "order_id": f"ord-{i:08d}",
        "customer": {"id": f"cust-{i % 5000:05d}", "tier": ("gold", "silver", "bronze")[i % 3]},
        "items": [
            {"sku": f"sku-{(i * 7 + k) % 10_000:05d}", "qty": 1 + k, "price": 9.99 + k}
            for k in range(4)
        ],
        "note": "x" * 700,
    }


async def _produce(settings: Settings, topic: str, count: int) -> int:
    producer = make_producer(settings, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    size = 0
    try:
        futures = []
        for i in range(count):
            value = orjson.dumps(_payload(i))
            size += len(value)
            futures.append(await producer.send(topic, value, key=str(i).encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return size // max(count, 1)


async def kafka_intake(
    url: str,
    *,
    events: int = 100_000,
    max_records: int | None = None,
    fetch_bytes: int | None = None,
) -> list[Figure]:
    """Figures at the settings' defaults, or at ``max_records`` (kafka_batch_max)
    and ``fetch_bytes`` (kafka_fetch_partition_bytes) where given."""
    ceiling = await intake_ceiling(url, events, payload=_payload, partitions=PARTITIONS)
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench_orders_{run_id}"
    spec = WorkflowSpec(
        name="bench_orders",
        tasks=(TaskSpec(id="accept", handler="noop"),),
        triggers=(KafkaTrigger(topic=topic, params={"order_id": "{{ payload.order_id }}"}),),
    )
    async with _kafka() as (bootstrap, embedded):
        overrides: dict[str, Any] = {
            "kafka_bootstrap": bootstrap,
            "kafka_group_id": f"bench_{run_id}",
            "worker_slots": 0,
        }
        if max_records is not None:
            overrides["kafka_batch_max"] = max_records
        if fetch_bytes is not None:
            overrides["kafka_fetch_partition_bytes"] = fetch_bytes
        if embedded:
            overrides["kafka_idempotent_producer"] = False  # the embedded broker lacks it
        settings = Settings(**overrides)
        await ensure_topics(settings, {topic: PARTITIONS})
        payload_bytes = await _produce(settings, topic, events)
        options = dict(EMBEDDED_CONSUMER_OPTIONS) if embedded else {}
        source = KafkaSource(consumer_options=options)
        async with (
            scratch_database(url) as (db_url, db),
            Orchestrator(settings, db_url, workflows=[spec]) as orch,
        ):
            assert orch.engine is not None and orch.intake is not None
            source.setup(SourceContext(settings, orch.engine, orch.intake, orch.clock, None))
            source.use_router(orch.intake.router)
            started = time.perf_counter()
            cpu_started = time.process_time()
            first: float | None = None
            await source.start()
            try:
                deadline = started + 600
                while source.stats.messages < events:
                    if first is None and source.stats.messages:
                        first = time.perf_counter()
                    if time.perf_counter() > deadline:
                        raise TimeoutError(
                            f"only {source.stats.messages} of {events} events recorded in 600 s"
                        )
                    await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
            finally:
                await source.stop()
            async with db.pool.acquire() as conn:
                recorded = await conn.fetchval("SELECT count(*) FROM events")
                runs = await conn.fetchval("SELECT count(*) FROM runs")
    if recorded != events or runs != events:
        raise AssertionError(f"expected {events} events and runs, found {recorded} and {runs}")
    first = first or started
    ctx: dict[str, Any] = {
        "events": events,
        "partitions": PARTITIONS,
        "payload_bytes": payload_bytes,
        "seconds": round(elapsed, 3),
        # The engine's own CPU (it runs in this process); PostgreSQL's and the broker's aside.
        "engine_cpu_us_per_event": round(cpu / events * 1e6, 1),
        "first_batch_s": round(first - started, 3),
        "after_first_batch_events_per_s": round(events / max(elapsed - (first - started), 1e-9)),
        "batch_max": settings.kafka_batch_max,
        "fetch_partition_bytes": settings.kafka_fetch_partition_bytes,
        "pipeline": source.pipeline,
        "broker": "embedded" if embedded else "external",
        "consumer_options": options,
        **against(events / elapsed, ceiling),
    }
    return [
        Figure("kafka_intake", "events_per_s", events / elapsed, "events/s", ">= 25000", ctx),
        Figure("kafka_intake", "runs_per_s", runs / elapsed, "runs/s", ">= 25000", ctx),
    ]


@scenario(
    "kafka_intake",
    "100,000 ~1 KB JSON events on a 6-partition topic, one 1-task run each: events/s recorded",
)
async def _kafka_intake(url: str, args: argparse.Namespace, _tx: float) -> list[Figure]:
    figures = await kafka_intake(url, events=args.events)
    batch_sizes: list[int | None] = args.kafka_max_records or [None]
    fetch_sizes: list[int | None] = args.kafka_fetch_bytes or [None]
    if batch_sizes == [None] and fetch_sizes == [None]:
        return figures
    for max_records in batch_sizes:
        for fetch_bytes in fetch_sizes:
            at = await kafka_intake(
                url, events=args.events, max_records=max_records, fetch_bytes=fetch_bytes
            )
            # One figure per setting, named by it (and in its context).
            ctx = at[0].context
            setting = f"batch={ctx['batch_max']},fetch={ctx['fetch_partition_bytes'] // 1024}KiB"
            figures.append(dataclasses.replace(at[0], metric=f"events_per_s[{setting}]", target=""))
    return figures

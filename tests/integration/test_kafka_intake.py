"""Kafka intake against a real Kafka-protocol broker and a real PostgreSQL.

Every message becomes exactly one event row keyed by topic/partition/offset;
offsets are committed only after the events up to them are committed; poison
messages are dead-lettered without blocking their partition; redelivery (a
second consumer group, a restart after SIGKILL, a rebalance) starts nothing
new and skips nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from eventually import eventually

from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import database_name
from sources.kafka import KafkaSource
from sources.kafka_config import TopicPartition, make_consumer, make_producer
from sources.kafka_publish import publish
from sources.models import KafkaTrigger

PROCESS_SCRIPT = Path(__file__).with_name("kafka_intake_process.py")


def flow(name: str, topic: str, **trigger: Any) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="accept", handler="noop"),),
        triggers=(KafkaTrigger(topic=topic, **trigger),),
    )


async def produce(
    settings: Settings,
    topic: str,
    messages: Sequence[tuple[int | None, bytes | None]],
    *,
    headers: list[tuple[str, bytes]] | None = None,
    key: bytes | None = None,
    **producer_options: Any,
) -> list[tuple[int, int]]:
    """Send (partition or None, value) pairs in order; their (partition, offset)."""
    producer = make_producer(settings, linger_ms=2, **producer_options)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, partition=partition, headers=headers, key=key)
            for partition, value in messages
        ]
        sent = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in sent]


def ends_of(sent: Sequence[tuple[int, int]]) -> dict[int, int]:
    """The offset after the last message of each partition."""
    ends: dict[int, int] = {}
    for partition, offset in sent:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


async def committed(settings: Settings, topic: str, partitions: Sequence[int]) -> dict[int, int]:
    """The group's committed offsets (0 where none), read without joining the group."""
    consumer = make_consumer(settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def all_committed(settings: Settings, topic: str, ends: dict[int, int]) -> bool:
    return await committed(settings, topic, sorted(ends)) == ends


async def rows(db_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def count(db_url: str, table: str) -> int:
    [row] = await rows(db_url, f"SELECT count(*) AS n FROM {table}")
    return int(row["n"])


async def event_offsets(db_url: str, topic: str) -> list[tuple[int, int]]:
    found = await rows(
        db_url,
        "SELECT (meta->>'partition')::int AS p, (meta->>'offset')::int AS o "
        "FROM events WHERE source = 'kafka' AND channel = $1",
        topic,
    )
    return [(r["p"], r["o"]) for r in found]


@asynccontextmanager
async def orchestrator(
    settings: Settings, db_url: str, workflows: Sequence[WorkflowSpec], source: KafkaSource
) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(settings, db_url, workflows=workflows, sources=[source]) as orch:
        yield orch


def good(i: int) -> bytes:
    return orjson.dumps({"kind": "order", "order_id": f"o{i}", "n": i})


POISON = [
    b"{not json",
    b"\xff\xfe\x00binary",
    b'{"order_id": "cut',
    b"",
    b'{"text": "nul \\u0000 inside"}',
]


async def test_each_message_once_with_duplicates_and_poison_on_six_partitions(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("orders", partitions=6)
    settings = kafka_env.settings(kafka_batch_max=200)
    # 969 good messages: 940 distinct payloads, 29 of them produced a second
    # time (a second event, not a redelivery); 31 poison messages, all on
    # partition 3 among good ones, which must keep flowing past them.
    messages: list[tuple[int | None, bytes | None]] = []
    for i in range(940):
        messages.append((i % 6, good(i)))
        if i % 31 == 0:
            messages.append((3, POISON[(i // 31) % len(POISON)]))
    messages += [(i % 6, good(i)) for i in range(0, 870, 30)]
    assert len(messages) == 1000
    sent = await produce(settings, topic, messages)
    ends = ends_of(sent)
    poison_at = {pos for pos, (_, value) in zip(sent, messages, strict=True) if value in POISON}
    assert len(poison_at) == 31 and {p for p, _ in poison_at} == {3}

    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with orchestrator(settings, db_url, [spec], source):
        await eventually(
            lambda: all_committed(settings, topic, ends), timeout=30, what="offsets committed"
        )
    assert await count(db_url, "events") == 969
    assert await count(db_url, "runs") == 969
    recorded = await event_offsets(db_url, topic)
    letters = await rows(
        db_url,
        "SELECT reason, raw, (meta->>'partition')::int AS p, (meta->>'offset')::int AS o "
        "FROM dead_letter_events",
    )
    assert {(r["p"], r["o"]) for r in letters} == poison_at
    everything = Counter(recorded) + Counter((r["p"], r["o"]) for r in letters)
    assert everything == Counter(sent), "every offset exactly once, as an event or a dead letter"
    reasons = Counter(r["reason"].split(":")[0] for r in letters)
    assert set(reasons) == {
        "message is not JSON",
        "message is not UTF-8 text",
        "message contains a NUL character (\\u0000), which PostgreSQL cannot store",
    }
    assert any(r["raw"] == "{not json" for r in letters)
    # The same payload sent twice is two events with a run each.
    params = await rows(db_url, "SELECT params->>'order_id' AS o FROM runs")
    assert Counter(r["o"] for r in params)["o0"] == 2
    # Poisoned partition 3 kept flowing: good messages after the last poison are recorded.
    last_poison = max(o for _, o in poison_at)
    assert any(p == 3 and o > last_poison for p, o in recorded)
    # (At least: a rebalance under load may hand a few messages over twice.)
    assert source.stats.messages >= 1000 and source.stats.dead_letters >= 31

    # Redelivery of the same topic/partition/offset: a second consumer group
    # reads every message again; nothing new is recorded or started.
    again = kafka_env.settings(group="second", kafka_batch_max=200)
    second = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with orchestrator(again, db_url, [spec], second):
        await eventually(
            lambda: all_committed(again, topic, ends), timeout=30, what="second group committed"
        )
    assert second.stats.messages >= 1000
    assert second.stats.duplicates >= 969 and second.stats.runs == 0
    assert await count(db_url, "events") == 969
    assert await count(db_url, "runs") == 969
    assert await count(db_url, "dead_letter_events") == 31


async def test_a_message_over_the_payload_limit_is_dead_lettered_and_its_partition_flows_on(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("big")
    settings = kafka_env.settings()
    limit = settings.max_payload_bytes
    assert limit == 1 << 20, "the default: the same limit as webhook bodies"
    at_limit = orjson.dumps({"order_id": "AT", "pad": "x" * (limit - 26)})
    assert len(at_limit) == limit
    too_big = orjson.dumps({"order_id": "BIG", "pad": "x" * (2 << 20)})
    messages = [(0, good(1)), (0, too_big), (0, at_limit), (0, good(2))]
    sent = await produce(settings, topic, messages, max_request_size=4 << 20)
    spec = flow("orders", topic, params={"order_id": "{{ payload.order_id }}"})
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with orchestrator(settings, db_url, [spec], source):
        await eventually(
            lambda: all_committed(settings, topic, ends_of(sent)), timeout=30, what="committed"
        )
    runs = await rows(db_url, "SELECT params->>'order_id' AS o FROM runs ORDER BY id")
    assert [r["o"] for r in runs] == ["o1", "AT", "o2"]
    assert sorted(o for _, o in await event_offsets(db_url, topic)) == [0, 2, 3]
    [letter] = await rows(
        db_url, "SELECT reason, raw, (meta->>'offset')::int AS o FROM dead_letter_events"
    )
    assert letter["o"] == 1
    assert letter["reason"] == (
        f"message is {len(too_big)} bytes, over the limit of {limit} bytes "
        "(ORCHESTRATOR_MAX_PAYLOAD_BYTES)"
    )
    assert letter["raw"].startswith('{"order_id":"BIG"')
    assert letter["raw"].endswith(f"[truncated: {len(too_big)} bytes in all]")


async def test_filters_mappings_and_what_an_event_carries(db_url: str, kafka_env: Any) -> None:
    topic = await kafka_env.create_topic("sales")
    settings = kafka_env.settings()
    specs = [
        flow(
            "created_orders",
            topic,
            filter="payload.kind == 'created'",
            params={
                "order_id": "{{ payload.order_id }}",
                "region": "{{ headers.region }}",
                "key": "{{ meta.key }}",
                "at": "{{ meta.offset }}",
            },
        ),
        # A mapping that fails when `items` is missing.
        flow(
            "item_counts",
            topic,
            filter="payload.kind != 'ping'",
            params={"n": "{{ length(payload.items) }}"},
        ),
        # A filter that fails when `items` is missing (only for created orders).
        flow(
            "big_orders", topic, filter="payload.kind == 'created' && length(payload.items) > `1`"
        ),
    ]
    values = [
        {"kind": "created", "order_id": "A", "items": [1, 2]},  # all three
        {"kind": "updated", "order_id": "B", "items": [1]},  # item_counts only
        {"kind": "created", "order_id": "C"},  # created_orders; two dead letters
        {"kind": "ping"},  # nothing matches: still recorded
    ]
    # Stored as sent: an integer beyond 64 bits and a decimal's scale are kept.
    exact = b'{"kind": "ping", "amount": 123456789012345678901234567890, "price": 1.50}'
    sent = await produce(
        settings,
        topic,
        [(0, orjson.dumps(v)) for v in values] + [(0, exact)],
        headers=[("region", b"eu")],
        key=b"k1",
    )
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with orchestrator(settings, db_url, specs, source):
        await eventually(
            lambda: all_committed(settings, topic, ends_of(sent)), timeout=30, what="committed"
        )
    events = await rows(
        db_url,
        "SELECT id, payload, headers, meta, run_ids FROM events ORDER BY (meta->>'offset')::int",
    )
    assert [json.loads(e["payload"]) for e in events] == [*values, json.loads(exact)]
    assert '"amount": 123456789012345678901234567890' in events[-1]["payload"]
    assert '"price": 1.50' in events[-1]["payload"]
    first = events[0]
    assert json.loads(first["headers"]) == {"region": "eu"}
    meta = json.loads(first["meta"])
    assert {k: meta[k] for k in ("topic", "partition", "offset", "key")} == {
        "topic": topic,
        "partition": 0,
        "offset": 0,
        "key": "k1",
    }
    assert isinstance(meta["timestamp"], int) and meta["timestamp"] > 0
    assert [len(e["run_ids"]) for e in events] == [3, 1, 1, 0, 0]
    runs = await rows(
        db_url, "SELECT workflow, params, event_id FROM runs ORDER BY event_id, workflow"
    )
    started = [(r["workflow"], json.loads(r["params"])) for r in runs]
    assert started == [
        ("big_orders", {}),
        ("created_orders", {"order_id": "A", "region": "eu", "key": "k1", "at": 0}),
        ("item_counts", {"n": 2}),
        ("item_counts", {"n": 1}),
        ("created_orders", {"order_id": "C", "region": "eu", "key": "k1", "at": 2}),
    ]
    letters = await rows(
        db_url, "SELECT workflow, reason, event_id FROM dead_letter_events ORDER BY workflow"
    )
    assert [(d["workflow"], d["event_id"]) for d in letters] == [
        ("big_orders", events[2]["id"]),
        ("item_counts", events[2]["id"]),
    ]
    assert letters[0]["reason"].startswith("filter ")
    assert "length" in letters[1]["reason"] and "mapping" in letters[1]["reason"]


class IntakeProcess:
    """``kafka_intake_process.py`` in its own OS process; its output is read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._pump = asyncio.create_task(self._read(proc.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip())

    @classmethod
    async def start(
        cls, db_url: str, kafka_env: Any, topic: str, *, batch_max: int
    ) -> IntakeProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCESS_SCRIPT),
            "--db",
            db_url,
            "--bootstrap",
            kafka_env.bootstrap,
            "--topic",
            topic,
            "--group",
            kafka_env.group(),
            "--batch-max",
            str(batch_max),
            "--consumer-options",
            json.dumps(kafka_env.consumer_options),
            *([] if kafka_env.embedded else ["--idempotent"]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        process = cls(proc)

        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError("intake process exited:\n" + "\n".join(process.lines))
            return "READY" in process.lines

        await eventually(ready, timeout=30, what="intake process READY")
        return process

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._pump

    async def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)
        await self._pump


@pytest.mark.timeout(120)
async def test_sigkill_mid_intake_then_restart_records_every_offset_once(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("crash", partitions=6)
    settings = kafka_env.settings()
    total = 6000
    sent = await produce(
        settings, topic, [(i % 6, orjson.dumps({"n": i, "pad": "x" * 200})) for i in range(total)]
    )
    first = await IntakeProcess.start(db_url, kafka_env, topic, batch_max=50)
    try:
        await eventually(
            lambda: _at_least(db_url, 1000), timeout=60, interval=0.005, what="1000 events"
        )
    finally:
        await first.kill()
    at_kill = await count(db_url, "events")
    assert at_kill < total, "the process was killed after it had recorded everything"
    committed_at_kill = await committed(settings, topic, range(6))
    assert sum(committed_at_kill.values()) < total

    second = await IntakeProcess.start(db_url, kafka_env, topic, batch_max=50)
    try:
        await eventually(
            lambda: all_committed(settings, topic, ends_of(sent)), timeout=60, what="all committed"
        )
    finally:
        await second.terminate()
    assert "STOPPED" in second.lines
    recorded = await event_offsets(db_url, topic)
    assert Counter(recorded) == Counter(sent), "each offset of each partition exactly once"
    runs = await rows(db_url, "SELECT count(*) AS n, count(DISTINCT event_id) AS e FROM runs")
    assert (runs[0]["n"], runs[0]["e"]) == (total, total)
    one_run_each = await rows(
        db_url, "SELECT count(*) AS n FROM events WHERE cardinality(run_ids) = 1"
    )
    assert one_run_each[0]["n"] == total


async def _at_least(db_url: str, n: int) -> bool:
    return await count(db_url, "events") >= n


@pytest.mark.timeout(90)
async def test_rebalance_between_two_consumers_loses_and_skips_nothing(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("shared", partitions=6)
    settings = kafka_env.settings(kafka_batch_max=50)
    spec = flow("shared_orders", topic, params={"n": "{{ payload.n }}"})
    sent: list[tuple[int, int]] = []
    counter = iter(range(1_000_000))

    async def produce_more(n: int) -> None:
        batch = [(None, orjson.dumps({"n": next(counter)})) for _ in range(n)]
        sent.extend(await produce(settings, topic, batch))

    a = KafkaSource(consumer_options=kafka_env.consumer_options)
    b = KafkaSource(consumer_options=kafka_env.consumer_options)
    await produce_more(1500)
    async with orchestrator(settings, db_url, [spec], a):
        await eventually(lambda: _recorded_some(a), timeout=30, what="a recording")
        # b joins while a is busy: the group rebalances and splits the partitions.
        async with orchestrator(settings, db_url, [spec], b):
            await produce_more(1500)
            await eventually(
                lambda: _split(a, b), timeout=30, what="partitions split between a and b"
            )
            await produce_more(1500)
            await eventually(lambda: _recorded_some(b), timeout=30, what="b recording")
            await produce_more(500)
        # b leaves midway: a takes every partition back.
        await produce_more(1500)
        await eventually(
            lambda: all_committed(settings, topic, ends_of(sent)), timeout=30, what="committed"
        )
    assert len(sent) == 6500
    recorded = await event_offsets(db_url, topic)
    assert Counter(recorded) == Counter(sent), "each offset exactly once, none skipped"
    assert await count(db_url, "runs") == 6500
    assert a.stats.rebalances >= 2 and b.stats.rebalances >= 1
    assert a.stats.messages > 0 and b.stats.messages > 0


async def _recorded_some(source: KafkaSource) -> bool:
    return source.stats.messages > 0


async def _split(a: KafkaSource, b: KafkaSource) -> bool:
    return bool(a.stats.assigned) and bool(b.stats.assigned)


async def _set_connections(admin_url: str, database: str, allowed: bool) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(
            f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}'
        )
        if not allowed:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
    finally:
        await admin.close()


@pytest.mark.timeout(60)
async def test_no_offset_is_committed_while_postgres_is_unavailable(
    db_url: str, pg_admin_url: str, kafka_env: Any
) -> None:
    database = database_name(db_url)
    topic = await kafka_env.create_topic("outage", partitions=2)
    settings = kafka_env.settings()
    spec = flow("outage_orders", topic, params={"n": "{{ payload.n }}"})
    before = await produce(settings, topic, [(i % 2, orjson.dumps({"n": i})) for i in range(100)])
    source = KafkaSource(
        consumer_options=kafka_env.consumer_options, retry_initial_s=0.05, retry_max_s=0.2
    )
    async with orchestrator(settings, db_url, [spec], source):
        await eventually(
            lambda: all_committed(settings, topic, ends_of(before)), timeout=30, what="first 100"
        )
        await _set_connections(pg_admin_url, database, False)
        try:
            during = await produce(
                settings, topic, [(i % 2, orjson.dumps({"n": i})) for i in range(100, 300)]
            )

            async def failing_again_and_again() -> bool:
                return source.stats.ingest_failures >= 3

            await eventually(failing_again_and_again, timeout=30, what="failed attempts")
            # Fetched, not recorded: the committed offsets have not moved.
            assert await committed(settings, topic, [0, 1]) == ends_of(before)
            assert source.stats.last_error is not None
        finally:
            await _set_connections(pg_admin_url, database, True)
        everything = ends_of(before + during)
        await eventually(
            lambda: all_committed(settings, topic, everything), timeout=30, what="all committed"
        )
    recorded = await event_offsets(db_url, topic)
    assert Counter(recorded) == Counter(before + during)
    assert await count(db_url, "runs") == 300


async def test_topics_follow_the_loaded_workflows(db_url: str, kafka_env: Any) -> None:
    first = await kafka_env.create_topic("first")
    second = await kafka_env.create_topic("second")
    settings = kafka_env.settings()
    no_kafka = WorkflowSpec(name="manual_only", tasks=(TaskSpec(id="t", handler="noop"),))
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with Orchestrator(settings, db_url, workflows=[no_kafka], sources=[source]) as orch:
        assert source.topics == () and source.consumer is None, "no topics, no consumer"
        await orch.register([flow("on_first", first, params={"v": "{{ payload.v }}"})])
        sent = await publish(settings, first, [{"v": 1}])
        await eventually(
            lambda: all_committed(settings, first, ends_of(sent)), timeout=30, what="first topic"
        )
        # A reload adds a workflow on another topic: the consumer follows.
        await orch.register([flow("on_second", second, params={"v": "{{ payload.v }}"})])
        assert source.topics == tuple(sorted([first, second]))
        sent = await publish(settings, second, [{"v": 2}, {"v": 3}], key="k")
        await eventually(
            lambda: all_committed(settings, second, ends_of(sent)), timeout=30, what="second topic"
        )
    runs = await rows(db_url, "SELECT workflow, params FROM runs ORDER BY id")
    assert [(r["workflow"], json.loads(r["params"])) for r in runs] == [
        ("on_first", {"v": 1}),
        ("on_second", {"v": 2}),
        ("on_second", {"v": 3}),
    ]
    keys = await rows(db_url, "SELECT meta->>'key' AS k FROM events WHERE channel = $1", second)
    assert [r["k"] for r in keys] == ["k", "k"]


async def test_the_orders_example_runs_from_a_published_event(
    db_url: str, kafka_env: Any, examples_dir: Path
) -> None:
    from handlers import builtin_registry
    from orchestrator.loader import load_path
    from orchestrator.run_waiter import wait_for_runs

    loaded = load_path(examples_dir / "orders.yaml", base=builtin_registry())
    assert not loaded.errors
    spec = loaded.workflows["orders"]
    settings = kafka_env.settings(worker_slots=2)
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    order_id = kafka_env.prefix  # unique: other tests may publish on `orders` too
    async with Orchestrator(
        settings, db_url, registry=loaded.handlers, workflows=[spec], sources=[source]
    ) as orch:
        assert source.topics == ("orders",)
        await publish(settings, "orders", [{"order_id": order_id, "customer": "c-42"}])

        async def started() -> list[asyncpg.Record]:
            return await rows(
                db_url, "SELECT id FROM runs WHERE params->>'order_id' = $1", order_id
            )

        [run] = await eventually(started, timeout=30, what="the orders run")
        assert orch.db is not None
        states = await wait_for_runs(orch.db, [run["id"]], timeout=30)
    assert states[run["id"]].value == "success"
    [confirm] = await rows(
        db_url,
        "SELECT output FROM task_instances WHERE run_id = $1 AND task_id = 'confirm'",
        run["id"],
    )
    message = json.loads(confirm["output"])["message"]
    assert message == f"order {order_id} for c-42 accepted by run {run['id']}"

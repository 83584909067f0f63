"""Lifecycle events out, against the real database and a real Kafka-protocol
broker: CloudEvents on the topic in order per run, a transaction in progress
never skipped, relays sharing the work, retention waiting for the relay, and a
relay killed with SIGKILL mid-publish losing nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from eventually import eventually

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.freshness import FreshnessWatch
from orchestrator.retention import prune
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import connect
from sources.kafka_config import TopicPartition, make_consumer
from sources.lifecycle_relay import LifecycleRelay
from sources.plugins import lifecycle
from sources.queries import SQL

PROCESS_SCRIPT = Path(__file__).with_name("lifecycle_relay_process.py")

CHAIN = WorkflowSpec(
    name="chain",
    tasks=(
        TaskSpec(id="a", handler="echo"),
        TaskSpec(id="b", handler="echo", upstream=("a",)),
        TaskSpec(id="c", handler="echo", upstream=("b",)),
    ),
)


def relay_settings(kafka_env: Any, topic: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "lifecycle_topic": topic,
        "lifecycle_poll_s": 0.05,
        "lifecycle_partitions": 2,
        **overrides,
    }
    return kafka_env.settings(**values)  # type: ignore[no-any-return]


async def consume(
    settings: Settings, topic: str, at_least: int
) -> list[tuple[str, dict[str, Any]]]:
    """(key, event) of every message on partition 0 of ``topic``, read to its
    end once at least ``at_least`` are there."""
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    got: list[tuple[str, dict[str, Any]]] = []
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)

        async def enough() -> bool:
            batch = await consumer.getmany(tp, timeout_ms=100, max_records=10_000)
            for message in batch.get(tp, []):
                got.append((message.key.decode(), orjson.loads(message.value)))
            if len(got) < at_least:
                return False
            end = (await consumer.end_offsets([tp]))[tp]
            return bool(await consumer.position(tp) >= end)  # and nothing after

        await eventually(enough, timeout=30, what=f"{at_least} lifecycle events")
    finally:
        await consumer.stop()
    return got


async def transition_ids(db_url: str) -> list[int]:
    conn = await asyncpg.connect(db_url)
    try:
        return [r["id"] for r in await conn.fetch("SELECT id FROM transitions ORDER BY id")]
    finally:
        await conn.close()


def assert_in_order_per_run(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Each run's transitions arrive in id order (a repeat may go back to an
    id already seen, never past one not yet seen)."""
    seen: dict[str, list[int]] = defaultdict(list)
    for key, event in events:
        if event["id"].startswith("transition-"):
            number = int(event["id"].removeprefix("transition-"))
            if number not in seen[key]:
                assert not seen[key] or number > seen[key][-1], (key, seen[key], number)
                seen[key].append(number)


async def test_transitions_go_out_as_cloudevents_in_order_per_run(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("lifecycle")
    settings = relay_settings(kafka_env, topic, worker_slots=4)
    relay = lifecycle.create(settings)
    assert isinstance(relay, LifecycleRelay)
    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[CHAIN], sources=[relay]
    ) as orch:
        assert orch.engine is not None and orch.db is not None
        runs = [await orch.engine.trigger("chain", {}, actor="test") for _ in range(3)]
        await wait_for_runs(orch.db, runs, timeout=20)
        expected = await transition_ids(db_url)
        events = await consume(settings, topic, len(expected))
    ids = [e["id"] for _k, e in events]
    assert sorted(ids) == sorted(f"transition-{i}" for i in expected)
    assert len(set(ids)) == len(ids), "published once each"
    assert_in_order_per_run(events)
    key, first = events[0]
    assert key == str(first["data"]["run_id"])
    assert first["specversion"] == "1.0"
    assert first["source"] == "/orchestrator"
    assert first["datacontenttype"] == "application/json"
    assert first["time"].endswith("Z")
    ends = [e for _k, e in events if e["type"] == "orchestrator.run.success"]
    assert len(ends) == 3
    assert ends[0]["subject"] == f"runs/{ends[0]['data']['run_id']}"
    assert ends[0]["data"]["workflow"] == "chain"
    done = [e for _k, e in events if e["type"] == "orchestrator.task.success"]
    assert {e["subject"].rsplit("/", 1)[1] for e in done} == {"a", "b", "c"}


async def test_dataset_updates_and_alerts_go_out_with_the_run_they_belong_to(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("kinds")
    settings = relay_settings(kafka_env, topic, worker_slots=2)
    publish = WorkflowSpec.model_validate(
        {
            "name": "publish",
            "tasks": [
                {
                    "id": "p",
                    "handler": "echo",
                    "outlets": [{"uri": "s3://lake/x", "fresh_within": "1h"}],
                }
            ],
            "alerts": [{"on": ["dataset_stale"], "routes": [{"type": "log"}]}],
        }
    )
    failing = WorkflowSpec.model_validate(
        {
            "name": "failing",
            "tasks": [{"id": "f", "handler": "fail", "retry": {"max_attempts": 1}}],
            "alerts": [{"on": ["run_failed"], "routes": [{"type": "log"}]}],
        }
    )
    relay = LifecycleRelay()
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=[publish, failing],
        sources=[relay],
    ) as orch:
        assert orch.engine is not None and orch.db is not None
        published = await orch.engine.trigger("publish", {}, actor="test")
        failed = await orch.engine.trigger("failing", {}, actor="test")
        await wait_for_runs(orch.db, [published, failed], timeout=20)
        later = ManualClock(SYSTEM_CLOCK.now() + timedelta(hours=2))
        assert await FreshnessWatch(orch.engine, later).check() == ["s3://lake/x"]
        expected = len(await transition_ids(db_url)) + 3
        events = await consume(settings, topic, expected)
    update = next(e for _k, e in events if e["type"] == "orchestrator.dataset.updated")
    assert update["id"].startswith("dataset-update-")
    assert update["subject"] == "datasets/s3://lake/x"
    assert update["data"]["run_id"] == published and update["data"]["task_id"] == "p"
    alert = next((k, e) for k, e in events if e["type"] == "orchestrator.alert.run_failed")
    assert alert[0] == str(failed)
    # A failed run's alert names the task that failed it.
    assert alert[1]["id"].startswith("alert-") and alert[1]["subject"] == f"runs/{failed}/tasks/f"
    # A dataset's own alert goes out on the dataset's key, as its updates do.
    key, stale = next((k, e) for k, e in events if e["type"] == "orchestrator.alert.dataset_stale")
    assert (key, stale["subject"]) == ("s3://lake/x", "datasets/s3://lake/x")
    assert stale["data"]["dataset"] == "s3://lake/x" and stale["data"]["run_id"] is None
    # After the transition that raised it, as on the run's key.
    keyed = [e["type"] for k, e in events if k == str(failed)]
    assert keyed.index("orchestrator.run.failed") < keyed.index("orchestrator.alert.run_failed")


def test_off_unless_a_topic_is_set() -> None:
    assert lifecycle.create(Settings(kafka_bootstrap="k:9092")) is None
    assert lifecycle.create(Settings(kafka_bootstrap="k:9092", lifecycle_topic="t")) is not None
    assert (
        lifecycle.create(Settings(kafka_bootstrap="k:9092", lifecycle_topic="t", roles="api"))
        is None
    )


async def test_a_transaction_still_in_progress_is_published_after_it_commits(
    db_url: str, kafka_env: Any
) -> None:
    """Ids commit out of order: the lower id of a transaction still open must
    not be skipped when a higher one commits first."""
    topic = await kafka_env.create_topic("horizon")
    settings = relay_settings(kafka_env, topic, lifecycle_partitions=1)
    db = await connect(db_url, size=2, min_size=1)
    slow = await asyncpg.connect(db_url)
    try:
        relay = LifecycleRelay(background=False)
        relay.attach(settings, db, SYSTEM_CLOCK)
        async with relay:
            tx = slow.transaction()
            await tx.start()
            # Stands for an engine commit under way: its id is drawn first.
            low = await slow.fetchval(
                "INSERT INTO transitions (run_id, to_state, actor) "
                "VALUES (7, 'running', 'test') RETURNING id"
            )
            async with db.pool.acquire() as conn:
                high = await conn.fetchval(
                    "INSERT INTO transitions (run_id, to_state, actor) "
                    "VALUES (7, 'success', 'test') RETURNING id"
                )
            assert high > low
            await relay.drain()
            first = await consume(settings, topic, 1)
            assert [e["id"] for _k, e in first] == [f"transition-{high}"]
            await tx.commit()
            await relay.drain()
            both = await consume(settings, topic, 2)
            assert [e["id"] for _k, e in both] == [f"transition-{high}", f"transition-{low}"]
            assert 0 < relay.lag_s() < 10, "published through the last pass"
    finally:
        await slow.close()
        await db.close()


async def test_two_relays_share_the_partitions_and_publish_each_event_once(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("shared")
    settings = relay_settings(kafka_env, topic, lifecycle_partitions=4, lifecycle_batch=7)
    db = await connect(db_url, size=4, min_size=1)
    try:
        a, b = LifecycleRelay(), LifecycleRelay()
        a.attach(settings, db, SYSTEM_CLOCK)
        b.attach(settings, db, SYSTEM_CLOCK)
        async with a, b:
            async with db.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO transitions (run_id, to_state, actor) "
                    "SELECT r % 10, 'running', 'test' FROM generate_series(1, 200) AS r"
                )
            events = await consume(settings, topic, 200)
            await eventually(
                lambda: _published(db_url, 200), timeout=10, what="cursors at 200 published"
            )
        assert a.published > 0 and b.published > 0, "both relays took partitions"
        assert a.published + b.published == 200
        assert len({e["id"] for _k, e in events}) == len(events) == 200
        assert_in_order_per_run(events)
    finally:
        await db.close()


async def test_a_relay_alone_publishes_every_partition_in_one_pass(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("alone")
    settings = relay_settings(kafka_env, topic, lifecycle_partitions=4)
    db = await connect(db_url, size=2, min_size=1)
    try:
        relay = LifecycleRelay(background=False)
        relay.attach(settings, db, SYSTEM_CLOCK)
        async with relay:
            async with db.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO transitions (run_id, to_state, actor) "
                    "SELECT r % 10, 'running', 'test' FROM generate_series(1, 40) AS r"
                )
            done = await relay.pass_once(due_only=False)
            assert done is not None
            assert done.parts == frozenset({0, 1, 2, 3}) and not done.empty
            assert done.published == 40
            events = await consume(settings, topic, 40)
        assert len({e["id"] for _k, e in events}) == 40
        assert_in_order_per_run(events)
    finally:
        await db.close()


async def _published(db_url: str, n: int) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        return bool(await conn.fetchval("SELECT sum(published) FROM lifecycle_cursors") == n)
    finally:
        await conn.close()


async def test_retention_keeps_a_run_until_its_events_are_published(
    db_url: str, kafka_env: Any
) -> None:
    topic = await kafka_env.create_topic("retention")
    settings = relay_settings(kafka_env, topic, worker_slots=2)
    async with Orchestrator(settings, db_url, registry=builtin_registry(), workflows=[CHAIN]) as o:
        assert o.engine is not None and o.db is not None
        relay = LifecycleRelay(background=False)
        relay.attach(settings, o.db, SYSTEM_CLOCK)
        async with relay:
            run = await o.engine.trigger("chain", {}, actor="test")
            await wait_for_runs(o.db, [run], timeout=20)
            later = SYSTEM_CLOCK.now() + timedelta(days=1)
            assert (await prune(o.db, later, keep_unpublished=True)).runs == 0, "not published"
            await relay.drain()
            assert (await prune(o.db, later, keep_unpublished=True)).runs == 1


class RelayProcess:
    """``lifecycle_relay_process.py`` in its own OS process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._pump = asyncio.create_task(self._read(proc.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode(errors="replace").rstrip())

    @classmethod
    async def start(cls, db_url: str, kafka_env: Any, topic: str, *args: str) -> RelayProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCESS_SCRIPT),
            db_url,
            kafka_env.bootstrap,
            topic,
            "idempotent" if not kafka_env.embedded else "plain",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def saw(self, line: str) -> bool:
        if self.proc.returncode is not None:
            raise AssertionError("relay process exited:\n" + "\n".join(self.lines))
        return line in self.lines

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._pump

    async def terminate(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 30)
        await self._pump


@pytest.mark.timeout(90)
@pytest.mark.parametrize("point", ["after_publish", "before_acks"])
async def test_relay_killed_mid_publish_loses_nothing_and_repeats_with_the_same_ids(
    db_url: str, kafka_env: Any, point: str
) -> None:
    topic = await kafka_env.create_topic("crash")
    settings = relay_settings(kafka_env, topic, worker_slots=4)
    # The cursors start at the present: create them before the history.
    db = await connect(db_url, size=2, min_size=1)
    async with db.pool.acquire() as conn:
        await conn.execute(SQL.lifecycle_create_cursors, 2)
    await db.close()
    async with Orchestrator(settings, db_url, registry=builtin_registry(), workflows=[CHAIN]) as o:
        assert o.engine is not None and o.db is not None
        runs = [await o.engine.trigger("chain", {}, actor="test") for _ in range(30)]
        await wait_for_runs(o.db, runs, timeout=30)
    expected = await transition_ids(db_url)

    # Pages of 10, killed on the third: after the broker acknowledged it and
    # before its checkpoint (those ten go out again), or while it is on its
    # way (some of it may be on the broker: at most those go out again).
    first = await RelayProcess.start(
        db_url, kafka_env, topic, "--stop-at", point, "--stop-after", "3"
    )
    try:
        await eventually(lambda: first.saw("STOPPED"), timeout=30, what="the third page")
    finally:
        await first.kill()
    second = await RelayProcess.start(db_url, kafka_env, topic)
    try:
        await eventually(lambda: second.saw("READY"), timeout=30, what="second relay READY")
        # Everything once, plus the repeats (known once the cursors say done).
        await eventually(
            lambda: _published(db_url, len(expected)), timeout=30, what="all checkpointed"
        )
        events = await consume(settings, topic, len(expected))
    finally:
        await second.terminate()

    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _key, event in events:
        by_id[event["id"]].append(event)
    assert set(by_id) == {f"transition-{i}" for i in expected}, "no event lost"
    repeated = {i: copies for i, copies in by_id.items() if len(copies) > 1}
    if point == "after_publish":
        assert len(repeated) == 10, "the page not checkpointed went out again"
    assert len(repeated) <= 10 and all(len(c) == 2 for c in repeated.values())
    assert all(copies[0] == copies[1] for copies in repeated.values()), "same id, same event"
    assert_in_order_per_run(events)

"""Paused workflows fed by real sources: Kafka messages from a real broker,
webhooks over HTTP and files in a landing zone, then unpaused; and a
schedule that came due while paused, caught up at unpause (manual clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import ManualClock
from orchestrator.engine import Engine
from orchestrator.pausing import pause_workflow, unpause_workflow
from orchestrator.sources import Source
from orchestrator.spec import OnPause, TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.backfill import BackfillError, backfill
from sources.files import LandingSource
from sources.kafka import KafkaSource
from sources.kafka_config import make_producer
from sources.models import FileTrigger, KafkaTrigger, ScheduleTrigger, WebhookTrigger
from sources.schedule import ScheduleSource
from sources.webhook import WebhookSource

pytestmark = pytest.mark.timeout(120)


def fed(name: str, on_pause: OnPause, topic: str) -> WorkflowSpec:
    """A workflow every source feeds: Kafka ``topic``, hook ``orders``, files ``in/*.json``."""
    return WorkflowSpec(
        name=name,
        on_pause=on_pause,
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(
            KafkaTrigger(
                topic=topic, params={"n": "{{ payload.n }}", "others": "{{ meta.coalesced }}"}
            ),
            WebhookTrigger(hook="orders", auth="none", params={"n": "{{ payload.n }}"}),
            FileTrigger(glob="in/*.json", quiet_s=0.2, params={"n": "{{ meta.path }}"}),
        ),
    )


@asynccontextmanager
async def everything(
    db_url: str, kafka_env: Any, zone: Path, workflows: Sequence[WorkflowSpec]
) -> AsyncIterator[tuple[Orchestrator, aiohttp.ClientSession]]:
    settings = kafka_env.settings(
        landing_dir=zone, landing_rescan_s=0.5, poll_interval_s=0.2, intake_batch_delay_s=0.002
    )
    sources: list[Source] = [
        KafkaSource(consumer_options=kafka_env.consumer_options),
        WebhookSource(),
        LandingSource(default_quiet_s=0.2, move_interval_s=0.1),
    ]
    async with Orchestrator(
        settings,
        db_url,
        registry=builtin_registry(),
        workflows=workflows,
        sources=sources,
        http=True,
    ) as orch:
        assert orch.http is not None
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{orch.http.port}") as client:
            yield orch, client


async def fetch(db: Database, query: str, *args: Any) -> list[dict[str, Any]]:
    async with db.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(query, *args)]


async def runs_of(db: Database, workflow: str) -> list[dict[str, Any]]:
    rows = await fetch(
        db,
        "SELECT r.id, r.params::text AS params, e.source FROM runs r "
        "JOIN events e ON e.id = r.event_id WHERE r.workflow = $1 ORDER BY r.id",
        workflow,
    )
    return [{**r, "params": orjson.loads(r["params"])} for r in rows]


async def events_recorded(db: Database, n: int) -> None:
    async def probe() -> bool:
        [row] = await fetch(db, "SELECT count(*) AS n FROM events")
        return bool(row["n"] >= n)

    await eventually(probe, timeout=60, what=f"{n} events recorded")


async def send_kafka(kafka_env: Any, topic: str, values: Sequence[int]) -> None:
    producer = make_producer(kafka_env.settings(), linger_ms=2)
    await producer.start()
    try:
        for n in values:
            await (await producer.send(topic, orjson.dumps({"n": n}), partition=0))
    finally:
        await producer.stop()


async def post_hook(client: aiohttp.ClientSession, n: int) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"delivery-{n}"}
    async with client.post("/hooks/orders", data=orjson.dumps({"n": n}), headers=headers) as resp:
        return resp.status, await resp.json()


def drop_file(zone: Path, name: str) -> None:
    path = zone / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(b"{}")
    tmp.rename(path)


async def test_each_policy_with_kafka_webhooks_and_files_then_unpause(
    db_url: str, db: Database, kafka_env: Any, tmp_path: Path
) -> None:
    topic = await kafka_env.create_topic("orders")
    zone = tmp_path / "landing"
    zone.mkdir()
    flows = [
        fed("buf", OnPause.BUFFER, topic),
        fed("coal", OnPause.COALESCE, topic),
        fed("drop", OnPause.DROP, topic),
    ]
    async with everything(db_url, kafka_env, zone, flows) as (orch, client):
        engine = orch.engine
        assert engine is not None
        for flow in flows:
            assert await pause_workflow(engine, flow.name, actor="test", reason="outage")

        # Arrival order: five Kafka messages, two webhooks, a file, two more messages.
        await send_kafka(kafka_env, topic, range(5))
        await events_recorded(db, 5)
        answers = [await post_hook(client, n) for n in (100, 101)]
        for status, body in answers:
            assert status == 202, body
            assert body["paused"] is True and body["run_ids"] == []
            assert body["paused_workflows"] == ["buf", "coal", "drop"]
        drop_file(zone, "a.json")
        await events_recorded(db, 8)
        await send_kafka(kafka_env, topic, [5, 6])
        await events_recorded(db, 10)
        # A redelivered webhook is stored once and started once.
        status, again = await post_hook(client, 100)
        assert status == 202 and again["event_id"] == answers[0][1]["event_id"]

        assert await fetch(db, "SELECT id FROM runs") == []
        held = await fetch(
            db, "SELECT workflow, state, count(*) AS n FROM held_events GROUP BY 1, 2 ORDER BY 1"
        )
        assert [(h["workflow"], h["state"], h["n"]) for h in held] == [
            ("buf", "buffered", 10),
            ("coal", "buffered", 10),
            ("drop", "dropped", 10),
        ]

        done = await unpause_workflow(engine, "buf", actor="test", reason="back")
        buf = await runs_of(db, "buf")
        assert [r["id"] for r in buf] == done.run_ids
        assert [(r["source"], r["params"]["n"]) for r in buf] == [
            *[("kafka", n) for n in range(5)],
            ("webhook", 100),
            ("webhook", 101),
            ("file", "in/a.json"),
            ("kafka", 5),
            ("kafka", 6),
        ]

        done = await unpause_workflow(engine, "coal", actor="test", reason="back")
        assert done.coalesced == 7
        coal = await runs_of(db, "coal")
        # One run per trigger with its latest event, in the order those arrived.
        assert [(r["source"], r["params"]) for r in coal] == [
            ("webhook", {"n": 101}),
            ("file", {"n": "in/a.json"}),
            ("kafka", {"n": 6, "others": 6}),
        ]

        done = await unpause_workflow(engine, "drop", actor="test", reason="back")
        assert done.run_ids == [] and await runs_of(db, "drop") == []
        dropped = await fetch(db, "SELECT reason FROM held_events WHERE workflow = 'drop'")
        assert {d["reason"] for d in dropped} == {"workflow 'drop' is paused (on_pause: drop)"}

        # Unpaused, the next message starts each workflow at once.
        await send_kafka(kafka_env, topic, [7])
        await events_recorded(db, 11)

        async def started() -> bool:
            latest = [(await runs_of(db, f.name))[-1:] for f in flows]
            return all(last and last[0]["params"]["n"] == 7 for last in latest)

        await eventually(started, timeout=30, what="runs for the message sent after unpause")
        assert len(await runs_of(db, "buf")) == 11
        assert len(await fetch(db, "SELECT id FROM held_events WHERE state = 'buffered'")) == 0


# -- schedules ------------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)


def hourly(catchup: Literal["all", "latest", "none"]) -> WorkflowSpec:
    return WorkflowSpec(
        name="hourly",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(ScheduleTrigger(cron="0 * * * *", catchup=catchup),),
    )


async def advance(clock: ManualClock, by: timedelta, source: ScheduleSource) -> None:
    before = source.ticks
    await clock.advance(by)

    async def ticked() -> bool:
        return source.ticks > before

    await eventually(ticked, what="a scheduler tick")


async def hours(db: Database) -> list[int]:
    rows = await fetch(db, "SELECT logical_date FROM runs ORDER BY logical_date")
    return [r["logical_date"].hour for r in rows]


@pytest.mark.parametrize(("catchup", "expected"), [("all", [10, 11, 12, 13]), ("latest", [10, 13])])
async def test_intervals_due_while_paused_follow_the_catchup_policy_at_unpause(
    db_url: str, db: Database, catchup: Literal["all", "latest"], expected: list[int]
) -> None:
    clock = ManualClock(T0)
    source = ScheduleSource()
    settings = suite_settings(worker_slots=0, schedule_tick_s=60)
    async with Orchestrator(
        settings, db_url, workflows=[hourly(catchup)], sources=[source], clock=clock
    ) as orch:
        engine = orch.engine
        assert engine is not None

        async def first_tick() -> bool:
            return source.ticks > 0

        await eventually(first_tick, what="the first scheduler tick")
        await advance(clock, timedelta(minutes=30), source)  # 11:00: the 10:00 run
        assert await hours(db) == [10]
        await pause_workflow(engine, "hourly", actor="test")
        for _ in range(3):  # 12:00, 13:00, 14:00: three intervals end while paused
            await advance(clock, timedelta(hours=1), source)
        assert await hours(db) == [10]
        assert await fetch(db, "SELECT id FROM held_events") == []
        await unpause_workflow(engine, "hourly", actor="test")
        await advance(clock, timedelta(minutes=1), source)
        assert await hours(db) == expected


async def test_a_backfill_of_a_paused_workflow_is_refused(db_url: str, engine: Engine) -> None:
    from orchestrator.intake import Intake

    spec = hourly("all")
    await engine.register([spec])
    await pause_workflow(engine, "hourly", actor="test")
    with pytest.raises(BackfillError, match="'hourly' is paused"):
        await backfill(
            Intake(engine), spec, T0 - timedelta(hours=3), T0, now=T0 + timedelta(hours=1)
        )
    async with engine.db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == 0

"""Event intake against a real PostgreSQL: routing, dedup, dead letters, atomicity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from orchestrator.engine import Engine
from orchestrator.errors import ParamsError, UnknownWorkflowError
from orchestrator.intake import DeadLetter, Event, Intake, Router
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.models import FileTrigger, KafkaTrigger, WebhookTrigger

ORDERS = WorkflowSpec(
    name="orders",
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(
        KafkaTrigger(
            topic="orders",
            filter="payload.kind == 'created'",
            params={"order_id": "{{ payload.order_id }}", "p": "{{ meta.partition }}"},
        ),
    ),
)
AUDIT = WorkflowSpec(
    name="audit",
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(
        KafkaTrigger(topic="orders", params={"n": "{{ length(payload.items) }}"}),
        WebhookTrigger(hook="sales", params={"x": "{{ payload.x }}"}),
        FileTrigger(glob="crm/**/*.csv", params={"path": "{{ meta.path }}"}),
    ),
)


def kafka_event(offset: int, payload: Any) -> Event:
    return Event(
        source="kafka",
        channel="orders",
        dedup_key=f"kafka:orders:0:{offset}",
        payload=payload,
        meta={"topic": "orders", "partition": 0, "offset": offset},
    )


@pytest.fixture
async def intake(engine: Engine) -> Intake:
    await engine.register([ORDERS, AUDIT])
    return Intake(engine, Router([ORDERS, AUDIT]))


async def runs_of(db: Database) -> list[dict[str, Any]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, workflow, params::text AS params, event_id FROM runs ORDER BY id"
        )
    return [{**dict(r), "params": orjson.loads(r["params"])} for r in rows]


async def count(db: Database, table: str) -> int:
    async with db.pool.acquire() as conn:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return n


async def test_an_event_starts_every_matching_workflow_once(intake: Intake, db: Database) -> None:
    created = kafka_event(1, {"kind": "created", "order_id": "A1", "items": [1, 2]})
    [first] = await intake.ingest([created])
    assert not first.duplicate and len(first.run_ids) == 2
    runs = await runs_of(db)
    assert {r["workflow"]: r["params"] for r in runs} == {
        "orders": {"order_id": "A1", "p": 0},
        "audit": {"n": 2},
    }
    assert {r["event_id"] for r in runs} == {first.event_id}

    [again] = await intake.ingest([created])
    assert again.duplicate and again.event_id == first.event_id
    assert sorted(again.run_ids) == sorted(first.run_ids)
    assert len(await runs_of(db)) == 2


async def test_filter_no_match_and_unrouted_events_are_still_recorded(
    intake: Intake, db: Database
) -> None:
    updated = kafka_event(2, {"kind": "updated", "order_id": "A1", "items": []})
    [answer] = await intake.ingest([updated])
    assert [r["workflow"] for r in await runs_of(db)] == ["audit"]
    assert answer.run_ids and not answer.dead_letters
    [nobody] = await intake.ingest(
        [Event(source="kafka", channel="elsewhere", dedup_key="kafka:elsewhere:0:0", payload={})]
    )
    assert nobody.run_ids == [] and nobody.event_id
    assert await count(db, "events") == 2


async def test_a_mapping_error_dead_letters_that_workflow_only(
    intake: Intake, db: Database
) -> None:
    # length(null) fails for `audit`; `orders` still starts.
    odd = kafka_event(3, {"kind": "created", "order_id": "B2"})
    [answer] = await intake.ingest([odd])
    assert [r["workflow"] for r in await runs_of(db)] == ["orders"]
    assert len(answer.dead_letters) == 1 and "length" in answer.dead_letters[0]
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT workflow, reason, event_id FROM dead_letter_events")
    assert row["workflow"] == "audit" and row["event_id"] == answer.event_id
    await intake.ingest([odd])  # redelivered: no second dead letter, no second run
    assert await count(db, "dead_letter_events") == 1
    assert len(await runs_of(db)) == 1


async def test_a_batch_is_one_transaction_with_in_batch_duplicates(
    intake: Intake, db: Database
) -> None:
    batch = [
        kafka_event(i, {"kind": "created", "order_id": f"C{i}", "items": []}) for i in range(50)
    ]
    batch.append(batch[7])
    poison = DeadLetter("kafka", "orders", "kafka:orders:0:999", "not JSON", raw="{oops")
    answers = await intake.ingest(batch, dead_letters=[poison])
    assert len(answers) == 51
    assert answers[-1].duplicate and answers[-1].run_ids == answers[7].run_ids
    assert await count(db, "events") == 50
    assert len(await runs_of(db)) == 100
    assert await count(db, "dead_letter_events") == 1


async def test_an_unknown_workflow_rolls_back_the_whole_batch(intake: Intake, db: Database) -> None:
    good = kafka_event(1, {"kind": "created", "order_id": "D1", "items": []})
    manual = Event(source="manual", channel="ghost", dedup_key="manual:x", workflow="ghost")
    with pytest.raises(UnknownWorkflowError):
        await intake.ingest([good, manual])
    assert await count(db, "events") == 0
    assert await count(db, "runs") == 0


async def test_file_globs_and_logical_dates(intake: Intake, db: Database) -> None:
    deep = Event(
        source="file",
        channel="crm/2026/01/a.csv",
        dedup_key="file:a",
        meta={"path": "crm/2026/01/a.csv"},
    )
    top = Event(source="file", channel="crm/b.csv", dedup_key="file:b", meta={"path": "crm/b.csv"})
    other = Event(source="file", channel="erp/c.csv", dedup_key="file:c")
    answers = await intake.ingest([deep, top, other])
    assert [len(a.run_ids) for a in answers] == [1, 1, 0]
    day = datetime(2026, 1, 1, tzinfo=UTC)
    tick = Event(
        source="schedule",
        channel="orders",
        dedup_key="schedule:orders:2026-01-01",
        workflow="orders",
        logical_date=day,
    )
    [scheduled] = await intake.ingest([tick])
    [replayed] = await intake.ingest([tick])
    assert replayed.duplicate and replayed.run_ids == scheduled.run_ids
    async with db.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM runs WHERE workflow = 'orders' AND logical_date = $1", day
            )
            == 1
        )


DAILY = WorkflowSpec(
    name="daily",
    params={
        "date": {"type": "string", "format": "date", "required": True},
        "limit": {"type": "integer", "default": 10},
    },
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(KafkaTrigger(topic="orders", params={"date": "{{ payload.date }}"}),),
)


@pytest.fixture
async def typed_intake(engine: Engine) -> Intake:
    await engine.register([ORDERS, DAILY])
    return Intake(engine, Router([ORDERS, DAILY]))


async def dead_letters(db: Database) -> list[dict[str, Any]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT source, workflow, reason, event_id FROM dead_letter_events ORDER BY id"
        )
    return [dict(r) for r in rows]


async def test_params_a_workflow_refuses_dead_letter_the_event_for_it_only(
    typed_intake: Intake, db: Database
) -> None:
    # The message has no `date`: the template renders null, and `daily` requires it.
    [answer] = await typed_intake.ingest([kafka_event(1, {"kind": "created", "order_id": "A1"})])
    assert [r["workflow"] for r in await runs_of(db)] == ["orders"]
    [letter] = await dead_letters(db)
    assert letter["workflow"] == "daily" and letter["event_id"] == answer.event_id
    assert "'date' is required but was null" in letter["reason"]
    assert answer.dead_letters == [letter["reason"]]

    # A wrong type is refused the same way; a good message starts both.
    await typed_intake.ingest([kafka_event(2, {"kind": "created", "date": "2026-02-30"})])
    assert "'date' should be a date, YYYY-MM-DD" in (await dead_letters(db))[-1]["reason"]
    [ok] = await typed_intake.ingest([kafka_event(3, {"kind": "created", "date": "2026-02-01"})])
    assert len(ok.run_ids) == 2 and not ok.dead_letters
    daily = [r for r in await runs_of(db) if r["workflow"] == "daily"]
    assert [r["params"] for r in daily] == [{"date": "2026-02-01", "limit": 10}]


async def test_named_events_are_checked_against_the_registered_version(
    typed_intake: Intake, db: Database
) -> None:
    # Schedule events name their workflow: a refusal is a dead letter.
    tick = Event(
        source="schedule",
        channel="daily",
        dedup_key="schedule:daily:2026-01-01",
        workflow="daily",
        params={"date": "2026-01-01", "limt": 5},
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
    )
    [answer] = await typed_intake.ingest([tick])
    assert answer.run_ids == [] and not answer.duplicate
    [letter] = await dead_letters(db)
    assert (letter["source"], letter["workflow"]) == ("schedule", "daily")
    assert "'limt' is not a declared param (did you mean 'limit'?)" in letter["reason"]

    # A manual event's caller is told, and nothing is recorded.
    manual = Event(
        source="manual",
        channel="daily",
        dedup_key="manual:daily:1",
        workflow="daily",
        params={"date": 20260101},
    )
    with pytest.raises(ParamsError) as caught:
        await typed_intake.ingest([manual])
    assert caught.value.problems == [("date", "should be a valid string, got 20260101")]
    assert await count(db, "events") == 1  # the schedule tick only
    assert await runs_of(db) == []


async def test_an_unknown_workflow_names_the_closest_registered_one(
    typed_intake: Intake,
) -> None:
    manual = Event(source="manual", channel="dayly", dedup_key="manual:y", workflow="dayly")
    with pytest.raises(UnknownWorkflowError, match="did you mean 'daily'"):
        await typed_intake.ingest([manual])


async def test_repeated_manual_and_schedule_events_leave_no_gap_in_run_ids(
    intake: Intake, db: Database
) -> None:
    """A repeated Idempotency-Key or logical date starts nothing and uses up no
    run id: the next new run gets the id right after the last one given out."""

    def manual(key: str) -> Event:
        return Event("manual", "orders", f"manual:orders:{key}", workflow="orders")

    def tick(day: int) -> Event:
        when = datetime(2026, 1, day, tzinfo=UTC)
        return Event(
            "schedule", "orders", f"schedule:orders:{day}", workflow="orders", logical_date=when
        )

    first = await intake.ingest([manual("k-1"), tick(1)])
    for _ in range(3):
        again = await intake.ingest([manual("k-1"), tick(1)])
        assert [a.duplicate for a in again] == [True, True]
        assert [a.run_ids for a in again] == [a.run_ids for a in first]
    # A batch mixing repeats with new events (and a Kafka event, routed to two
    # workflows) numbers only the new runs.
    created = kafka_event(1, {"kind": "created", "order_id": "M1", "items": []})
    mixed = await intake.ingest([tick(1), manual("k-2"), created, manual("k-1"), tick(2)])
    assert [a.duplicate for a in mixed] == [True, False, False, True, False]
    ids = [r["id"] for r in await runs_of(db)]
    assert ids == list(range(ids[0], ids[0] + 6))
    assert sorted(i for a in mixed if not a.duplicate for i in a.run_ids) == ids[2:]

"""Pausing a workflow at the intake level, against a real PostgreSQL: each
``on_pause`` policy, unpause racing intake, manual triggers, the audit trail."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from orchestrator import audit
from orchestrator.engine import Engine
from orchestrator.errors import UnknownWorkflowError
from orchestrator.intake import Event, Intake, Router
from orchestrator.pausing import held_counts, pause_workflow, pauses, unpause_workflow
from orchestrator.spec import OnPause, TaskSpec, WorkflowSpec
from orchestrator.store import Database
from sources.models import KafkaTrigger, WebhookTrigger


def spec(name: str, on_pause: OnPause) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="t", handler="noop"),),
        on_pause=on_pause,
        triggers=(
            KafkaTrigger(
                topic="orders",
                params={"n": "{{ payload.n }}", "coalesced": "{{ meta.coalesced }}"},
            ),
            WebhookTrigger(hook="sales", params={"n": "{{ payload.n }}"}),
        ),
    )


BUF = spec("buf", OnPause.BUFFER)
COAL = spec("coal", OnPause.COALESCE)
DROP = spec("drop", OnPause.DROP)
OTHER = WorkflowSpec(
    name="other",
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(KafkaTrigger(topic="orders", params={"n": "{{ payload.n }}"}),),
)
ALL = [BUF, COAL, DROP, OTHER]


def kafka(n: int) -> Event:
    return Event(
        source="kafka",
        channel="orders",
        dedup_key=f"kafka:orders:0:{n}",
        payload={"n": n},
        meta={"topic": "orders", "partition": 0, "offset": n},
    )


def hook(n: int) -> Event:
    return Event(source="webhook", channel="sales", dedup_key=f"hook:{n}", payload={"n": n})


@pytest.fixture
async def intake(engine: Engine) -> Intake:
    await engine.register(ALL)
    return Intake(engine, Router(ALL))


async def runs_of(db: Database, workflow: str) -> list[dict[str, Any]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, params::text AS params, event_id FROM runs WHERE workflow = $1 ORDER BY id",
            workflow,
        )
    return [{**dict(r), "params": orjson.loads(r["params"])} for r in rows]


async def test_buffer_starts_each_held_event_once_in_arrival_order(
    intake: Intake, engine: Engine, db: Database
) -> None:
    assert await pause_workflow(engine, "buf", actor="cli:ann", reason="outage")
    first = await intake.ingest([kafka(i) for i in range(5)])
    assert all(a.paused == ["buf"] and len(a.run_ids) == 3 for a in first)
    await intake.ingest([hook(100), kafka(5), kafka(3)])  # kafka 3 again: a redelivery
    assert await runs_of(db, "buf") == []
    assert [r["params"]["n"] for r in await runs_of(db, "other")] == [0, 1, 2, 3, 4, 5]
    async with db.pool.acquire() as conn:
        assert (await held_counts(conn, ["buf"]))["buf"].buffered == 7

    done = await unpause_workflow(engine, "buf", actor="cli:ann", reason="fixed")
    assert len(done.run_ids) == 7 and done.changed
    runs = await runs_of(db, "buf")
    assert [r["params"]["n"] for r in runs] == [0, 1, 2, 3, 4, 100, 5]
    assert [r["id"] for r in runs] == done.run_ids
    # A redelivery is answered from the stored event and starts nothing more.
    [again] = await intake.ingest([kafka(2)])
    assert again.duplicate and runs[2]["event_id"] == again.event_id
    # Nothing is left to start: a second unpause is a no-op.
    assert not (await unpause_workflow(engine, "buf", actor="cli:ann")).changed
    assert len(await runs_of(db, "buf")) == 7
    async with db.pool.acquire() as conn:
        assert await held_counts(conn, ["buf"]) == {}


async def test_coalesce_starts_one_run_per_trigger_with_the_latest_event(
    intake: Intake, engine: Engine, db: Database
) -> None:
    await pause_workflow(engine, "coal", actor="cli:ann")
    await intake.ingest([kafka(i) for i in range(4)])
    await intake.ingest([hook(10), hook(11)])
    await intake.ingest([kafka(4)])
    done = await unpause_workflow(engine, "coal", actor="cli:ann")
    assert done.coalesced == 5
    runs = await runs_of(db, "coal")
    # One per trigger: the hook's latest (11, one other) and Kafka's (4, four others),
    # in the arrival order of the latest events.
    assert [r["params"] for r in runs] == [{"n": 11}, {"n": 4, "coalesced": 4}]
    async with db.pool.acquire() as conn:
        states = await conn.fetch(
            "SELECT state, run_id, count(*) AS n FROM held_events WHERE workflow = 'coal' "
            "GROUP BY state, run_id ORDER BY run_id, state"
        )
    assert [(r["state"], r["run_id"], r["n"]) for r in states] == [
        ("coalesced", runs[0]["id"], 1),
        ("started", runs[0]["id"], 1),
        ("coalesced", runs[1]["id"], 4),
        ("started", runs[1]["id"], 1),
    ]


async def test_drop_records_the_event_as_dropped_and_never_starts_it(
    intake: Intake, engine: Engine, db: Database
) -> None:
    await pause_workflow(engine, "drop", actor="cli:ann")
    [answer] = await intake.ingest([kafka(1)])
    assert "drop" in answer.paused
    async with db.pool.acquire() as conn:
        [row] = await conn.fetch("SELECT state, reason, event_id FROM held_events")
        assert (await held_counts(conn, ["drop"]))["drop"].dropped == 1
    assert row["state"] == "dropped" and row["event_id"] == answer.event_id
    assert "paused (on_pause: drop)" in row["reason"]
    done = await unpause_workflow(engine, "drop", actor="cli:ann")
    assert done.run_ids == [] and await runs_of(db, "drop") == []
    await intake.ingest([kafka(2)])
    assert [r["params"]["n"] for r in await runs_of(db, "drop")] == [2]


async def test_a_manual_trigger_of_a_paused_workflow_is_buffered(
    intake: Intake, engine: Engine, db: Database
) -> None:
    from orchestrator.api import manual_event

    await pause_workflow(engine, "buf", actor="cli:ann")
    [answer] = await intake.ingest([manual_event("buf", {"n": 7}, actor="cli:bob")])
    assert answer.run_ids == [] and answer.paused == ["buf"]
    done = await unpause_workflow(engine, "buf", actor="cli:ann")
    [run] = await runs_of(db, "buf")
    assert run["id"] == done.run_ids[0] and run["params"] == {"n": 7}


async def test_pause_and_unpause_are_audited_idempotent_and_name_unknown_workflows(
    engine: Engine, intake: Intake, db: Database
) -> None:
    assert await pause_workflow(engine, "buf", actor="cli:ann", reason="provider outage")
    assert not await pause_workflow(engine, "buf", actor="cli:bob", reason="again")
    async with db.pool.acquire() as conn:
        [paused] = (await pauses(conn)).values()
    assert (paused.workflow, paused.actor, paused.reason) == ("buf", "cli:ann", "provider outage")
    await unpause_workflow(engine, "buf", actor="cli:bob", reason="provider back")
    entries = await audit.entries(db, workflow="buf")
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("unpause", "cli:bob", "provider back"),
        ("pause", "cli:ann", "provider outage"),
    ]
    with pytest.raises(UnknownWorkflowError, match="'nope'"):
        await pause_workflow(engine, "nope", actor="cli:ann")
    with pytest.raises(UnknownWorkflowError, match="'nope'"):
        await unpause_workflow(engine, "nope", actor="cli:ann")


async def test_unpause_racing_intake_loses_nothing_and_starts_nothing_twice(
    intake: Intake, engine: Engine, db: Database
) -> None:
    """Batches keep coming while the workflow is paused and unpaused again and
    again: every event ends with exactly one run, whatever the interleaving."""
    batches = [[kafka(b * 20 + i) for i in range(20)] for b in range(30)]

    async def feed() -> None:
        for batch in batches:
            await intake.ingest(batch)

    async def toggle() -> None:
        for _ in range(15):
            await pause_workflow(engine, "buf", actor="t")
            await unpause_workflow(engine, "buf", actor="t")

    await asyncio.gather(feed(), toggle(), feed())
    await unpause_workflow(engine, "buf", actor="t")
    runs = await runs_of(db, "buf")
    assert sorted(r["params"]["n"] for r in runs) == list(range(600))
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM held_events WHERE state='buffered'") == 0


async def test_retention_keeps_buffered_events_until_their_runs_start(
    intake: Intake, engine: Engine, db: Database
) -> None:
    from datetime import timedelta

    from orchestrator.clock import SYSTEM_CLOCK
    from orchestrator.retention import count_prunable, prune

    await pause_workflow(engine, "buf", actor="t")
    await pause_workflow(engine, "drop", actor="t")
    await pause_workflow(engine, "coal", actor="t")
    await pause_workflow(engine, "other", actor="t")
    await intake.ingest([kafka(1), kafka(2)])
    later = SYSTEM_CLOCK.now() + timedelta(days=1)
    # buf and coal still need both events; drop's hold does not keep them.
    assert (await count_prunable(db, later)).events == 0
    await prune(db, later)
    await unpause_workflow(engine, "buf", actor="t")
    assert [r["params"]["n"] for r in await runs_of(db, "buf")] == [1, 2]
    await unpause_workflow(engine, "coal", actor="t")
    await unpause_workflow(engine, "other", actor="t")
    assert len(await runs_of(db, "coal")) == 1

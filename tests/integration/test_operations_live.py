"""Operator actions on work in flight: cancelling a running shell command (its
process group goes), a waiting sensor (its wait ends; a later event starts
nothing), and holding a task while the rest of the run goes on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import audit
from orchestrator.app import Orchestrator
from orchestrator.errors import OperationRefusedError, UnknownTaskError
from orchestrator.intake import Event
from orchestrator.operations import cancel_run, clear_run, pause_task, unpause_task
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState, TaskState, is_legal, is_legal_run


async def states_of(o: Orchestrator, run_id: int) -> dict[str, str]:
    assert o.db is not None
    async with o.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, state::text FROM task_instances WHERE run_id = $1", run_id
        )
    return {r["task_id"]: r["state"] for r in rows}


async def all_legal(o: Orchestrator) -> None:
    assert o.db is not None
    async with o.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, from_state, to_state FROM transitions WHERE from_state IS NOT NULL"
        )
    for r in rows:
        if r["task_id"] is None:
            legal = is_legal_run(RunState(r["from_state"]), RunState(r["to_state"]), operator=True)
        else:
            legal = is_legal(TaskState(r["from_state"]), TaskState(r["to_state"]), operator=True)
        assert legal, dict(r)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_cancel_stops_a_running_shell_command_and_its_process_group(
    db_url: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    spec = WorkflowSpec(
        name="long_shell",
        tasks=(
            TaskSpec(
                id="work",
                handler="shell",
                inputs={
                    "command": ["sh", "-c", f"echo $$ > {pidfile}; sleep 60 & sleep 60"],
                    "timeout_s": 120,
                },
            ),
            TaskSpec(id="after", handler="noop", upstream=("work",)),
        ),
    )
    async with Orchestrator(
        suite_settings(heartbeat_s=0.2), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("long_shell", actor="test")

        async def started() -> int:
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            return int(text) if text else 0

        pgid = await eventually(started, timeout=20, what="the command started")
        assert group_alive(pgid)
        result = await cancel_run(o.engine, run_id, actor="cli:ops", reason="runaway")
        assert sorted(result.skipped) == ["after", "work"]
        assert (await wait_for_runs(o.db, [run_id], timeout=5))[run_id] == RunState.CANCELLED

        async def gone() -> bool:
            return not group_alive(pgid)

        # Within a heartbeat the worker cancels the handler; shell kills the group.
        await eventually(gone, timeout=10, what="the process group gone")
        assert await states_of(o, run_id) == {"work": "skipped", "after": "skipped"}
        await all_legal(o)


FULFILL = WorkflowSpec(
    name="fulfill",
    tasks=(
        TaskSpec(
            id="shipped",
            handler="sensor.kafka",
            inputs={
                "topic": "shipments",
                "correlation": "payload.order_id",
                "equals": "{{ params.order_id }}",
            },
        ),
        TaskSpec(id="notify", handler="echo", upstream=("shipped",)),
    ),
)


async def test_cancel_ends_a_waiting_sensor_and_its_event_later_starts_nothing(
    db_url: str,
) -> None:
    async with Orchestrator(
        suite_settings(), db_url, registry=builtin_registry(), workflows=[FULFILL]
    ) as o:
        assert o.engine is not None and o.db is not None and o.intake is not None
        run_id = await o.engine.trigger("fulfill", {"order_id": "A-1"}, actor="test")

        async def deferred() -> bool:
            return (await states_of(o, run_id)).get("shipped") == "deferred"

        await eventually(deferred, what="the sensor waiting")
        result = await cancel_run(o.engine, run_id, actor="api:10.0.0.1", reason="order void")
        assert result.waits_ended == 1
        async with o.db.pool.acquire() as conn:
            wait = await conn.fetchrow("SELECT state, outcome, resolved_by FROM deferrals")
        assert dict(wait) == {
            "state": "resolved",
            "outcome": "cancelled",
            "resolved_by": "api:10.0.0.1",
        }

        before = await o.db.pool.fetchval("SELECT count(*) FROM transitions")
        await o.intake.ingest(
            [
                Event(
                    source="kafka",
                    channel="shipments",
                    dedup_key="kafka:shipments:0:1",
                    payload={"order_id": "A-1"},
                )
            ]
        )
        assert await o.db.pool.fetchval("SELECT count(*) FROM transitions") == before
        assert await states_of(o, run_id) == {"shipped": "skipped", "notify": "skipped"}
        assert (await wait_for_runs(o.db, [run_id], timeout=5))[run_id] == RunState.CANCELLED
        [entry] = await audit.entries(o.db, action="cancel")
        assert (entry.actor, entry.reason, entry.detail["waits_ended"]) == (
            "api:10.0.0.1",
            "order void",
            1,
        )
        await all_legal(o)


def fanout(name: str) -> WorkflowSpec:
    # ingest -> optimize -> publish, with a sibling branch ingest -> report.
    return WorkflowSpec(
        name=name,
        tasks=(
            TaskSpec(id="ingest", handler="echo", inputs={"n": 1}),
            TaskSpec(id="optimize", handler="echo", upstream=("ingest",)),
            TaskSpec(id="publish", handler="echo", upstream=("optimize",)),
            TaskSpec(id="report", handler="echo", upstream=("ingest",)),
        ),
    )


async def test_a_held_task_waits_without_a_slot_while_the_rest_goes_on(db_url: str) -> None:
    async with Orchestrator(
        suite_settings(worker_slots=1),
        db_url,
        registry=builtin_registry(),
        workflows=[fanout("opt")],
    ) as o:
        assert o.engine is not None and o.db is not None
        held = await pause_task(o.engine, "opt", "optimize", actor="cli:ana", reason="outage")
        assert held.moved == 0
        with pytest.raises(OperationRefusedError, match="held already"):
            await pause_task(o.engine, "opt", "optimize", actor="cli:ana")
        with pytest.raises(UnknownTaskError, match="no task 'nope'"):
            await pause_task(o.engine, "opt", "nope", actor="cli:ana")
        runs = [await o.engine.trigger("opt", actor="test") for _ in range(3)]

        async def settled() -> bool:
            found = [await states_of(o, r) for r in runs]
            return all(
                s
                == {
                    "ingest": "success",
                    "report": "success",
                    "optimize": "held",
                    "publish": "scheduled",
                }
                for s in found
            )

        # One worker slot and three held instances: upstream and sibling work finished.
        await eventually(settled, timeout=20, what="every optimize held, the rest done")
        async with o.db.pool.acquire() as conn:
            assert (
                await conn.fetchval("SELECT count(*) FROM task_instances WHERE state = 'running'")
                == 0
            )
            states = await conn.fetch("SELECT state::text FROM runs")
        assert {r["state"] for r in states} == {"running"}

        released = await unpause_task(o.engine, "opt", "optimize", actor="cli:ana", reason="back")
        assert released.moved == 3
        done = await wait_for_runs(o.db, runs, timeout=20)
        assert set(done.values()) == {RunState.SUCCESS}
        with pytest.raises(OperationRefusedError, match="not held"):
            await unpause_task(o.engine, "opt", "optimize", actor="cli:ana")
        actions = [(e.action, e.task_id, e.reason) for e in await audit.entries(o.db)]
        assert actions == [("unpause", "optimize", "back"), ("pause", "optimize", "outage")]
        await all_legal(o)


async def test_holding_a_queued_task_and_every_task_of_a_workflow(db_url: str) -> None:
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[fanout("q")]
    ) as o:
        assert o.engine is not None and o.db is not None
        first = await o.engine.trigger("q", actor="test")
        # Already queued instances are held at once; new runs' roots start held.
        assert (await pause_task(o.engine, "q", None, actor="t")).moved == 1
        second = await o.engine.trigger("q", actor="test")
        assert (await states_of(o, first))["ingest"] == "held"
        assert (await states_of(o, second))["ingest"] == "held"
        assert (await o.engine.claim("w", 10))[0] == []
        # Released while another hold still covers the task: stays held.
        await pause_task(o.engine, "q", "ingest", actor="t")
        assert (await unpause_task(o.engine, "q", None, actor="t")).moved == 0
        assert (await unpause_task(o.engine, "q", "ingest", actor="t")).moved == 2
        assert {(await states_of(o, r))["ingest"] for r in (first, second)} == {"queued"}
        # A cancelled run's held tasks are skipped with the rest; a clear runs them again.
        await pause_task(o.engine, "q", "ingest", actor="t")
        await cancel_run(o.engine, first, actor="t")
        assert (await states_of(o, first))["ingest"] == "skipped"
        await clear_run(o.engine, first, actor="t")
        assert (await states_of(o, first))["ingest"] == "held"  # still held: the hold stands
        await all_legal(o)


async def test_a_held_task_is_held_again_when_it_retries_or_its_wait_resumes_it(
    db_url: str,
) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from orchestrator.clock import SYSTEM_CLOCK
    from orchestrator.deferral import Defer, Resolution
    from orchestrator.plan import Outcome

    spec = WorkflowSpec(name="h", tasks=(TaskSpec(id="t", handler="noop"),))
    async with Orchestrator(
        suite_settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        engine = o.engine

        async def claim_one() -> Outcome:
            [c] = (await engine.claim("w", 1))[0]
            return Outcome(c.id, c.run_id, c.task_id, c.attempt, "w", TaskState.UP_FOR_RETRY)

        # Held while running, then failed: held instead of up for retry.
        run_id = await engine.trigger("h", actor="test")
        running = await claim_one()
        assert (await pause_task(engine, "h", "t", actor="t")).moved == 0
        await engine.complete([running], actor="w")
        assert (await states_of(o, run_id))["t"] == "held"
        assert (await engine.claim("w", 1))[0] == []

        # Up for retry when the hold comes: held at once, and released it still
        # waits out its retry delay.
        assert (await unpause_task(engine, "h", "t", actor="t")).moved == 1
        retry = await claim_one()
        await engine.complete([replace(retry, delay_s=3600.0)], actor="w")
        assert (await states_of(o, run_id))["t"] == "up_for_retry"
        assert (await pause_task(engine, "h", "t", actor="t")).moved == 1
        assert (await states_of(o, run_id))["t"] == "held"
        assert (await unpause_task(engine, "h", "t", actor="t")).moved == 1
        assert (await states_of(o, run_id))["t"] == "queued"
        assert (await engine.claim("w", 1))[0] == []  # the hour's delay still stands

        # A wait that resumes the handler of a held task resumes it held.
        waiting = await engine.trigger("h", actor="test")
        [c] = (await engine.claim("w", 1))[0]
        assert c.run_id == waiting
        wait = Defer(
            "time",
            "a later step",
            wake_at=SYSTEM_CLOCK.now() + timedelta(hours=1),
            resume="handler",
        )
        await engine.complete(
            [Outcome(c.id, c.run_id, c.task_id, c.attempt, "w", TaskState.DEFERRED, deferral=wait)],
            actor="w",
        )
        await pause_task(engine, "h", "t", actor="t")
        async with o.db.pool.acquire() as conn:
            wait_id = await conn.fetchval("SELECT id FROM deferrals WHERE run_id = $1", waiting)
        await engine.resolve([Resolution(wait_id, "resume", {"step": 2})], actor="test")
        assert (await states_of(o, waiting))["t"] == "held"
        # Both runs' instances are released; the first still waits out its delay.
        assert (await unpause_task(engine, "h", "t", actor="t")).moved == 2
        [resumed] = (await engine.claim("w", 1))[0]
        assert (resumed.run_id, resumed.resumed) == (waiting, {"step": 2})
        await all_legal(o)

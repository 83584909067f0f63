"""Deferred tasks: they hold no slot, and the event that ends their wait is
matched by intake, exactly once, even when it arrived first."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.deferral import Defer, correlation_key
from orchestrator.intake import Event
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState

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
        TaskSpec(
            id="notify",
            handler="echo",
            upstream=("shipped",),
            inputs={"carrier": "{{ upstream.shipped.payload.carrier }}"},
        ),
    ),
)
LANDED = WorkflowSpec(
    name="landed",
    tasks=(
        TaskSpec(id="wait", handler="sensor.file", inputs={"path": "in/{{ params.day }}/*.csv"}),
    ),
)
APPROVAL = WorkflowSpec(
    name="approval",
    tasks=(TaskSpec(id="approve", handler="sensor.callback", inputs={"timeout_s": 600}),),
)


settings = suite_settings


def shipment(offset: int, order_id: str, carrier: str = "dhl") -> Event:
    return Event(
        source="kafka",
        channel="shipments",
        dedup_key=f"kafka:shipments:0:{offset}",
        payload={"order_id": order_id, "carrier": carrier},
    )


async def states_of(orch: Orchestrator, run_id: int) -> dict[str, str]:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, state::text FROM task_instances WHERE run_id=$1", run_id
        )
    return {r["task_id"]: r["state"] for r in rows}


async def test_a_kafka_sensor_waits_without_a_slot_and_wakes_on_its_event(db_url: str) -> None:
    async with Orchestrator(
        settings(worker_slots=1), db_url, registry=builtin_registry(), workflows=[FULFILL]
    ) as o:
        assert o.engine is not None and o.intake is not None and o.db is not None
        runs = [await o.engine.trigger("fulfill", {"order_id": f"A-{i}"}) for i in range(5)]

        async def all_deferred() -> bool:
            found = [(await states_of(o, r))["shipped"] for r in runs]
            return found == ["deferred"] * len(runs)

        # One slot, five waiting sensors: waiting holds no slot.
        await eventually(all_deferred, what="every sensor deferred")
        async with o.db.pool.acquire() as conn:
            assert (
                await conn.fetchval("SELECT count(*) FROM task_instances WHERE state = 'running'")
                == 0
            )
        await o.intake.ingest([shipment(1, "A-3", "ups"), shipment(2, "Z-9")])
        done = await wait_for_runs(o.db, [runs[3]], timeout=20)
        assert done[runs[3]] == RunState.SUCCESS
        assert (await states_of(o, runs[0]))["shipped"] == "deferred"
        async with o.db.pool.acquire() as conn:
            out = await conn.fetchval(
                "SELECT output::text FROM task_instances WHERE run_id=$1 AND task_id='notify'",
                runs[3],
            )
            assert orjson.loads(out) == {"carrier": "ups"}
            # Replaying the same message wakes nothing twice.
            await o.intake.ingest([shipment(1, "A-3", "ups")])
            woke = "SELECT count(*) FROM transitions WHERE to_state='success' AND task_id='shipped'"
            assert await conn.fetchval(woke) == 1


async def test_an_event_that_arrived_first_still_satisfies_the_sensor(db_url: str) -> None:
    async with Orchestrator(
        settings(worker_slots=0), db_url, registry=builtin_registry(), workflows=[FULFILL, LANDED]
    ) as o:
        assert o.engine is not None and o.intake is not None and o.db is not None
        early = await o.engine.trigger("fulfill", {"order_id": "B-1"})
        day = await o.engine.trigger("landed", {"day": "2026-03-01"})
        # The events are recorded while no worker has started the sensors yet.
        await o.intake.ingest(
            [
                shipment(10, "B-1"),
                Event(
                    source="file",
                    channel="in/2026-03-01/sales.csv",
                    dedup_key="file:x",
                    meta={"path": "in/2026-03-01/sales.csv"},
                ),
            ]
        )
        async with o.db.pool.acquire() as conn:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM event_keys WHERE key = $1",
                    correlation_key("kafka", "shipments", "payload.order_id", "B-1"),
                )
                == 1
            )
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry(), workflows=[FULFILL, LANDED], migrate=False
    ) as o:
        assert o.db is not None
        final = await wait_for_runs(o.db, [early, day], timeout=20)
        assert set(final.values()) == {RunState.SUCCESS}
        async with o.db.pool.acquire() as conn:
            reasons = await conn.fetch(
                "SELECT reason FROM transitions WHERE from_state='deferred' ORDER BY id"
            )
        assert [r["reason"] for r in reasons] == ["event had already arrived"] * 2


async def test_a_callback_completes_once_and_can_fail_the_task(db_url: str) -> None:
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry(), workflows=[APPROVAL], http=True
    ) as o:
        assert o.engine is not None and o.db is not None and o.http is not None
        ok, bad = [await o.engine.trigger("approval") for _ in range(2)]

        async def urls() -> list[str]:
            assert o.db is not None
            async with o.db.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT config->>'url' AS url FROM deferrals WHERE state='waiting' "
                    "ORDER BY run_id"
                )
            return [r["url"] for r in rows] if len(rows) == 2 else []

        ok_url, bad_url = await eventually(urls, what="two callback waits")
        base = f"http://127.0.0.1:{o.http.port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(base + ok_url, json={"output": {"by": "ada"}}) as resp:
                assert resp.status == 202
            async with http.post(base + ok_url, json={"output": {"by": "eve"}}) as resp:
                assert resp.status == 404  # single use
            async with http.post(base + bad_url, json={"status": "maybe"}) as resp:
                assert resp.status == 400
            async with http.post(
                base + bad_url, json={"status": "failed", "error": "rejected"}
            ) as resp:
                assert resp.status == 202
            async with http.post(base + "/api/v1/callbacks/guessed", json={}) as resp:
                assert resp.status == 404
        final = await wait_for_runs(o.db, [ok, bad], timeout=20)
        assert final == {ok: RunState.SUCCESS, bad: RunState.FAILED}
        async with o.db.pool.acquire() as conn:
            out = await conn.fetchval("SELECT output::text FROM task_instances WHERE run_id=$1", ok)
            err = await conn.fetchval("SELECT error FROM task_instances WHERE run_id=$1", bad)
        assert orjson.loads(out) == {"by": "ada"} and err == "rejected"


async def test_a_handler_can_defer_mid_work_and_resume_with_the_event(db_url: str) -> None:
    reg = builtin_registry()
    calls: list[Any] = []

    async def remote_job(ctx: TaskContext) -> dict[str, Any]:
        calls.append(ctx.resumed)
        if ctx.resumed is None:
            raise Defer(
                "kafka",
                "job J-1 to finish",
                resume="handler",
                match_key=correlation_key("kafka", "shipments", "payload.order_id", "J-1"),
            )
        return {"finished": ctx.resumed["payload"]["carrier"]}

    reg.register("remote_job", remote_job)
    spec = WorkflowSpec(name="job", tasks=(TaskSpec(id="run", handler="remote_job"),))
    async with Orchestrator(settings(), db_url, registry=reg, workflows=[spec, FULFILL]) as o:
        assert o.engine is not None and o.intake is not None and o.db is not None
        run = await o.engine.trigger("job")
        await eventually(lambda: _state_is(o, run, "deferred"), what="handler deferred")
        await o.intake.ingest([shipment(7, "J-1", "fedex")])
        assert (await wait_for_runs(o.db, [run], timeout=20))[run] == RunState.SUCCESS
        assert calls[0] is None and calls[1]["payload"]["carrier"] == "fedex"
        async with o.db.pool.acquire() as conn:
            steps = await conn.fetch(
                "SELECT from_state, to_state, attempt FROM transitions WHERE task_id='run' "
                "ORDER BY id"
            )
        assert [(s["from_state"], s["to_state"]) for s in steps] == [
            (None, "queued"),
            ("queued", "running"),
            ("running", "deferred"),
            ("deferred", "queued"),
            ("queued", "running"),
            ("running", "success"),
        ]


async def _state_is(o: Orchestrator, run: int, state: str) -> bool:
    return (await states_of(o, run))["run"] == state


EXTRACT = WorkflowSpec(name="extract", tasks=(TaskSpec(id="pull", handler="noop"),))
REPORT_LATEST = WorkflowSpec(
    name="report_latest",
    tasks=(
        TaskSpec(
            id="after",
            handler="sensor.run",
            inputs={"workflow": "extract", "same_logical_date": False},
        ),
    ),
)
REPORT_DAILY = WorkflowSpec(
    name="report_daily",
    tasks=(TaskSpec(id="after", handler="sensor.run", inputs={"workflow": "extract"}),),
)


def dated(workflow: str, day: int) -> Event:
    from datetime import UTC, datetime

    when = datetime(2026, 1, day, tzinfo=UTC)
    return Event(
        source="schedule",
        channel=workflow,
        dedup_key=f"schedule:{workflow}:{day}",
        workflow=workflow,
        logical_date=when,
    )


async def test_a_run_sensor_waits_for_another_workflows_run(db_url: str) -> None:
    specs = [EXTRACT, REPORT_LATEST, REPORT_DAILY]
    async with Orchestrator(settings(), db_url, registry=builtin_registry(), workflows=specs) as o:
        assert o.engine is not None and o.intake is not None and o.db is not None
        waiting = await o.engine.trigger("report_latest")
        daily = (await o.intake.ingest([dated("report_daily", 2)]))[0].run_ids[0]
        await eventually(
            lambda: _state_is_task(o, waiting, "after", "deferred"), what="run sensor deferred"
        )
        # Another date's extract does not satisfy the daily report.
        other = (await o.intake.ingest([dated("extract", 1)]))[0].run_ids[0]
        assert (await wait_for_runs(o.db, [waiting, other], timeout=20)) == {
            waiting: RunState.SUCCESS,
            other: RunState.SUCCESS,
        }
        assert await _state_is_task(o, daily, "after", "deferred")
        await o.intake.ingest([dated("extract", 2)])
        assert (await wait_for_runs(o.db, [daily], timeout=20))[daily] == RunState.SUCCESS
        # The latest extract already succeeded: a new wait ends at once.
        late = await o.engine.trigger("report_latest")
        assert (await wait_for_runs(o.db, [late], timeout=20))[late] == RunState.SUCCESS
        async with o.db.pool.acquire() as conn:
            reason = await conn.fetchval(
                "SELECT reason FROM transitions WHERE run_id=$1 AND from_state='deferred'", late
            )
        assert reason.endswith("had already ended")


async def _state_is_task(o: Orchestrator, run: int, task: str, state: str) -> bool:
    return (await states_of(o, run)).get(task) == state


def timeouts(first: str, second: str) -> WorkflowSpec:
    """Every event sensor with a short timeout; kafka and run end as ``first``,
    file and callback as ``second``."""
    return WorkflowSpec(
        name="timeouts",
        tasks=(
            TaskSpec(
                id="kafka",
                handler="sensor.kafka",
                inputs={
                    "topic": "shipments",
                    "correlation": "payload.order_id",
                    "equals": "never",
                    "timeout_s": 0.3,
                    "on_timeout": first,
                },
            ),
            TaskSpec(
                id="file",
                handler="sensor.file",
                inputs={"path": "nothing/*.csv", "timeout_s": 0.3, "on_timeout": second},
            ),
            TaskSpec(
                id="callback",
                handler="sensor.callback",
                inputs={"timeout_s": 0.3, "on_timeout": second},
            ),
            TaskSpec(
                id="run",
                handler="sensor.run",
                inputs={
                    "workflow": "extract",
                    "same_logical_date": False,
                    "timeout_s": 0.3,
                    "on_timeout": first,
                },
            ),
        ),
    )


@pytest.mark.parametrize(("first", "second"), [("failed", "skipped"), ("skipped", "failed")])
async def test_every_event_sensor_times_out_to_failed_or_skipped(
    db_url: str, first: str, second: str
) -> None:
    spec = timeouts(first, second)
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry(), workflows=[spec, EXTRACT], http=True
    ) as o:
        assert o.engine is not None and o.db is not None and o.http is not None
        run = await o.engine.trigger("timeouts")
        assert (await wait_for_runs(o.db, [run], timeout=20))[run] == RunState.FAILED
        assert await states_of(o, run) == {
            "kafka": first,
            "file": second,
            "callback": second,
            "run": first,
        }
        async with o.db.pool.acquire() as conn:
            url = await conn.fetchval("SELECT config->>'url' FROM deferrals WHERE kind='callback'")
            reason = await conn.fetchval(
                "SELECT reason FROM transitions WHERE run_id=$1 AND task_id='kafka' "
                "AND from_state='deferred'",
                run,
            )
            error = await conn.fetchval(
                "SELECT error FROM task_instances WHERE run_id=$1 AND task_id='file'", run
            )
        assert reason.startswith("timed out after 0.3s waiting for a message on shipments")
        # Only a wait that ends as failed records an error.
        assert (error is not None) == (second == "failed")
        # The token expired with its wait.
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{o.http.port}{url}", json={}) as resp,
        ):
            assert resp.status == 404

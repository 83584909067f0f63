"""Alerts end to end: a local receiver verifies each Standard Webhooks
signature; dead letters, retries while the receiver is down, a flood
(deduplicated and rate-limited), an SLA missed while the run is queued,
escalation without an acknowledgement, and a relay killed mid-delivery."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from alert_receiver import Receiver
from cli_process import cli_runner
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator import audit
from orchestrator.alert_relay import AlertRelay, RelaySettings
from orchestrator.alert_spec import SlaSpec
from orchestrator.alerts import list_alerts
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.context import TaskContext
from orchestrator.engine import RunRequest
from orchestrator.notices import Notices
from orchestrator.plan import Happened
from orchestrator.registry import HandlerRegistry
from orchestrator.run_waiter import wait_for_runs
from orchestrator.secrets import EnvironmentBackend, Secrets
from orchestrator.spec import WorkflowSpec
from orchestrator.store import Database
from orchestrator.triggerer import Triggerer

pytestmark = pytest.mark.timeout(60)

RELAY_SCRIPT = Path(__file__).with_name("relay_process.py")
ROOT = Path(__file__).resolve().parents[2]
settings = partial(suite_settings, worker_slots=8, roles="worker", alert_retry_initial_s=0.05)


async def failing(ctx: TaskContext) -> None:
    ctx.log.info("loading rows")
    ctx.log.info("row 7 looks wrong")
    raise ValueError("bad row 7")


def registry() -> HandlerRegistry:
    own = HandlerRegistry()
    own.register("test.failing", failing)
    return builtin_registry().merged(own)


def workflow(rules: list[dict[str, Any]], *, tasks: int = 1, **extra: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {
            "name": "loads",
            "tasks": [
                {
                    "id": f"load{i}",
                    "handler": "test.failing",
                    "retry": {"max_attempts": 1, "dead_letter": True},
                }
                for i in range(tasks)
            ],
            "alerts": rules,
            **extra,
        }
    )


async def fetch(db: Database, sql: str, *args: Any) -> list[Any]:
    async with db.pool.acquire() as conn:
        return list(await conn.fetch(sql, *args))


async def all_sent(db: Database) -> bool:
    rows = await fetch(db, "SELECT count(*) AS n FROM alert_deliveries WHERE state = 'pending'")
    return bool(rows[0]["n"] == 0)


def relay_for(o: Orchestrator, clock: Any, **kw: Any) -> AlertRelay:
    assert o.db is not None
    return AlertRelay(
        o.db, clock, Secrets([EnvironmentBackend()]), settings=RelaySettings(**kw), listen=False
    )


async def test_a_dead_letter_raises_exactly_one_alert_with_its_log_tail_and_links(
    db_url: str, receiver: Receiver
) -> None:
    rules = [{"on": ["task_dead_lettered", "run_failed"], "routes": [receiver.route()]}]
    spec = workflow(rules)
    async with Orchestrator(
        settings(public_url="https://orch.example"), db_url, registry=registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("loads", actor="test")
        await eventually(lambda: _async(len(receiver.got) >= 2), what="two alerts")
        await eventually(lambda: all_sent(o.db), what="every delivery done")  # type: ignore[arg-type]
        kinds = sorted(body["kind"] for _, _, body in receiver.got)
        assert kinds == ["run_failed", "task_dead_lettered"]
        dead = next(b for _, _, b in receiver.got if b["kind"] == "task_dead_lettered")
        assert dead["workflow"] == "loads" and dead["version"] == spec.version
        assert (dead["run_id"], dead["task_id"], dead["attempt"]) == (run_id, "load0", 1)
        assert dead["error"] == {"type": "ValueError", "message": "bad row 7"}
        assert any("row 7 looks wrong" in line for line in dead["log_tail"])
        assert dead["links"] == {
            "ui": f"https://orch.example/#/runs/{run_id}",
            "api": f"https://orch.example/api/v1/runs/{run_id}",
        }
        assert dead["event"] is None
        # The run's alert names the task that failed it, with its log.
        failed = next(b for _, _, b in receiver.got if b["kind"] == "run_failed")
        assert (failed["task_id"], failed["attempt"]) == ("load0", 1)
        assert failed["error"] == {"type": "ValueError", "message": "bad row 7"}
        assert any("row 7 looks wrong" in line for line in failed["log_tail"])
        # The same happenings seen again raise nothing new: one alert per
        # (rule, run, task, kind).
        again = [Happened("task_dead_lettered", run_id, "loads", spec.version, "load0", 1)]
        async with o.db.transaction() as conn:
            assert await o.engine.alerts.record(conn, again, o.engine.specs, Notices()) == 0
        listed = await list_alerts(o.db)
        assert [a.state for a in listed] == ["delivered", "delivered"]
        assert len(receiver.got) == 2


async def _async(value: Any) -> Any:
    return value


async def test_a_receiver_that_is_down_gets_the_alert_once_it_is_back(
    db_url: str, receiver: Receiver
) -> None:
    receiver.down = True
    spec = workflow([{"on": ["task_dead_lettered"], "routes": [receiver.route()]}])
    async with Orchestrator(settings(), db_url, registry=registry(), workflows=[spec]) as o:
        assert o.engine is not None and o.db is not None
        await o.engine.trigger("loads", actor="test")
        await eventually(lambda: _async(len(receiver.tried) >= 3), what="three refused sends")
        receiver.down = False
        await eventually(lambda: _async(receiver.got), what="the alert delivered")
        await eventually(lambda: all_sent(o.db), what="every delivery done")  # type: ignore[arg-type]
        assert len(receiver.got) == 1
        # Every try carried the same id: a receiver can tell a resend.
        assert set(receiver.tried) == {receiver.got[0][1]}
        [alert] = await list_alerts(o.db)
        assert alert.deliveries[0]["attempts"] == len(receiver.tried)
        assert alert.deliveries[0]["state"] == "delivered"


async def test_a_flood_of_failures_is_deduplicated_and_rate_limited(
    db_url: str, receiver: Receiver
) -> None:
    route = receiver.route(name="oncall", max_per_minute=100)
    spec = workflow([{"on": ["task_dead_lettered"], "routes": [route]}], tasks=4)
    async with Orchestrator(
        settings(worker_slots=32, alert_relay=False), db_url, registry=registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        ids = await o.engine.create_runs([RunRequest("loads") for _ in range(250)], actor="test")
        ended = await wait_for_runs(o.db, ids, timeout=45)
        assert {s.value for s in ended.values()} == {"failed"}
        [row] = await fetch(o.db, "SELECT count(*) AS n FROM alerts")
        assert row["n"] == 1000
        # Every failure again: nothing new is raised.
        again = [
            Happened("task_dead_lettered", run_id, "loads", spec.version, f"load{i}", 1)
            for run_id in ids
            for i in range(4)
        ]
        async with o.db.transaction() as conn:
            assert await o.engine.alerts.record(conn, again, o.engine.specs, Notices()) == 0
        clock = ManualClock(SYSTEM_CLOCK.now())
        receiver.now = clock.now
        relay = relay_for(o, clock, batch=300)
        try:
            while await relay.drain():
                pass
            assert len(receiver.got) == 100  # this minute's share
            await clock.advance(60)
            while await relay.drain():
                pass
            assert len(receiver.got) == 200
        finally:
            await relay.stop()
        assert len({msg_id for _, msg_id, _ in receiver.got}) == 200


async def test_an_sla_is_missed_at_its_deadline_while_the_run_is_still_queued(
    db_url: str, receiver: Receiver
) -> None:
    spec = WorkflowSpec.model_validate(
        {
            "name": "slow",
            "max_active_runs": 1,
            "sla": {"finish_within": "1h"},
            "tasks": [{"id": "wait", "handler": "sensor.time", "inputs": {"delay_s": 36000}}],
            "alerts": [{"on": ["sla_missed"], "routes": [{"type": "log"}]}],
        }
    )
    assert spec.sla == SlaSpec(finish_within=3600)
    clock = ManualClock(SYSTEM_CLOCK.now())
    async with Orchestrator(settings(), db_url, registry=registry(), workflows=[spec]) as o:
        assert o.engine is not None and o.db is not None
        first = await o.engine.trigger("slow", actor="test")
        second = await o.engine.trigger("slow", actor="test")
        async with Triggerer(o.engine, clock, name="trig", poll_s=0.1) as trig:
            await trig.loaded.wait()
            armed = await fetch(o.db, "SELECT run_id FROM sla_deadlines ORDER BY run_id")
            assert [r["run_id"] for r in armed] == [first, second]  # the queued run's too
            await clock.advance(timedelta(minutes=59))
            assert await list_alerts(o.db) == []
            await clock.advance(timedelta(minutes=2))
            found = await eventually(lambda: list_alerts(o.db), what="sla alerts")  # type: ignore[arg-type]
            await eventually(
                lambda: _async(trig.slas.fired == 2),
                what="both deadlines fired",
            )
        found = await list_alerts(o.db)
        assert sorted(a.run_id or 0 for a in found) == [first, second]
        assert {a.kind for a in found} == {"sla_missed"}
        states = await fetch(o.db, "SELECT id, state::text AS s FROM runs ORDER BY id")
        assert [r["s"] for r in states] == ["running", "queued"]
        queued = next(a for a in found if a.run_id == second)
        assert queued.detail is not None and "still queued" in queued.detail


async def test_an_unacknowledged_alert_escalates_to_the_next_route(
    db_url: str, receiver: Receiver
) -> None:
    rule = {
        "on": ["task_dead_lettered"],
        "require_ack": True,
        "escalate_after": "10m",
        "routes": [receiver.route("/pager"), receiver.route("/ticket")],
    }
    spec = workflow([rule])
    async with Orchestrator(
        settings(alert_relay=False), db_url, registry=registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        ids = await o.engine.create_runs([RunRequest("loads"), RunRequest("loads")], actor="t")
        await wait_for_runs(o.db, ids, timeout=20)
        clock = ManualClock(SYSTEM_CLOCK.now())
        receiver.now = clock.now
        relay = relay_for(o, clock)
        try:
            while await relay.drain():
                pass
            assert sorted(p for p, _, _ in receiver.got) == ["/pager", "/pager"]
            first, second = sorted(await list_alerts(o.db), key=lambda a: a.run_id or 0)
            cli = cli_runner(db_url)
            done = await asyncio.to_thread(cli, "alerts", "ack", str(first.id), "--reason", "mine")
            assert done.returncode == 0, done.stderr
            again = await asyncio.to_thread(cli, "alerts", "ack", str(first.id))
            assert again.returncode == 2 and "already acknowledged" in again.stderr
            await clock.advance(timedelta(minutes=9))
            while await relay.drain():
                pass
            assert len(receiver.got) == 2
            await clock.advance(timedelta(minutes=2))
            while await relay.drain():
                pass
        finally:
            await relay.stop()
        tickets = [b for p, _, b in receiver.got if p == "/ticket"]
        assert [b["run_id"] for b in tickets] == [second.run_id]
        [entry] = await audit.entries(o.db, action="ack")
        assert entry.reason == "mine" and entry.detail["alert_id"] == first.id
        listed = await asyncio.to_thread(
            cli_runner(db_url), "alerts", "--state", "unacked", "--json"
        )
        assert [a["id"] for a in orjson.loads(listed.stdout)["items"]] == [second.id]


async def test_alerts_over_the_api(db_url: str, receiver: Receiver) -> None:
    spec = workflow([{"on": ["task_dead_lettered"], "routes": [{"type": "log"}]}])
    async with Orchestrator(
        settings(), db_url, registry=registry(), workflows=[spec], http=True
    ) as o:
        assert o.engine is not None and o.db is not None and o.http is not None
        await o.engine.trigger("loads", actor="test")
        await eventually(lambda: list_alerts(o.db), what="an alert")  # type: ignore[arg-type]
        await eventually(lambda: all_sent(o.db), what="delivered")  # type: ignore[arg-type]
        base = f"http://127.0.0.1:{o.http.port}/api/v1/alerts"
        async with aiohttp.ClientSession() as client:
            async with client.get(base) as resp:
                assert resp.status == 200
                [alert] = (await resp.json())["items"]
            assert alert["kind"] == "task_dead_lettered" and alert["state"] == "delivered"
            async with client.get(base, params={"state": "lost"}) as resp:
                assert resp.status == 400
                assert "state" in (await resp.json())["detail"]
            async with client.post(f"{base}/{alert['id']}/ack", json={"reason": "seen"}) as resp:
                assert resp.status == 200, await resp.text()
            async with client.post(f"{base}/{alert['id']}/ack", json={}) as resp:
                assert resp.status == 409
            async with client.post(f"{base}/999999/ack", json={}) as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"


async def test_a_relay_killed_mid_delivery_delivers_after_restart_with_the_same_id(
    db_url: str, receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    spec = workflow([{"on": ["task_dead_lettered"], "routes": [receiver.route()]}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with Orchestrator(
        settings(alert_relay=False), db_url, registry=registry(), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        await wait_for_runs(o.db, [await o.engine.trigger("loads", actor="t")], timeout=20)
        victim = await asyncio.create_subprocess_exec(
            sys.executable, str(RELAY_SCRIPT), db_url, "1.0", env=env
        )
        try:
            await eventually(lambda: _async(receiver.tried), what="the first send")
            victim.send_signal(signal.SIGKILL)
            assert await victim.wait() == -signal.SIGKILL
        finally:
            if victim.returncode is None:
                victim.kill()
                await victim.wait()
        assert receiver.got == []
        receiver.hold.set()
        successor = await asyncio.create_subprocess_exec(
            sys.executable, str(RELAY_SCRIPT), db_url, "1.0", env=env
        )
        try:
            await eventually(lambda: _async(receiver.got), what="delivered after restart")
            await eventually(lambda: all_sent(o.db), what="recorded")  # type: ignore[arg-type]
        finally:
            successor.kill()
            await successor.wait()
        # The killed relay's request may still reach the receiver's handler:
        # a duplicate, told apart by its id, the same on every send.
        assert {msg_id for _, msg_id, _ in receiver.got} == set(receiver.tried) == {"alert_1_0"}
        [alert] = await list_alerts(o.db)
        assert alert.state == "delivered" and alert.deliveries[0]["attempts"] == 2


async def test_a_cleared_run_that_succeeds_raises_succeeded_after_failure(
    db_url: str, receiver: Receiver
) -> None:
    from orchestrator.operations import clear_run
    from orchestrator.run_waiter import wait_for_runs

    broken = True

    async def flaky(ctx: TaskContext) -> None:
        if broken:
            raise ValueError("provider down")

    own = HandlerRegistry()
    own.register("test.flaky", flaky)
    spec = WorkflowSpec.model_validate(
        {
            "name": "recovers",
            "tasks": [{"id": "t", "handler": "test.flaky", "retry": {"max_attempts": 1}}],
            "alerts": [
                {"on": ["run_failed", "run_succeeded_after_failure"], "routes": [receiver.route()]}
            ],
        }
    )
    async with Orchestrator(
        settings(), db_url, registry=builtin_registry().merged(own), workflows=[spec]
    ) as o:
        assert o.engine is not None and o.db is not None
        run_id = await o.engine.trigger("recovers", actor="test")
        await wait_for_runs(o.db, [run_id], timeout=20)
        broken = False
        await clear_run(o.engine, run_id, actor="cli:ana", reason="provider back")
        await eventually(lambda: _async(len(receiver.got) >= 2), what="both alerts")
        kinds = [body["kind"] for _, _, body in receiver.got]
        assert kinds == ["run_failed", "run_succeeded_after_failure"]
        assert receiver.got[1][2]["run_id"] == run_id

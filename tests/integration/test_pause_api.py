"""Pausing over the HTTP API and the CLI, and listing workflows with their
owners, tags and paused state: the answers, the 4xx cases, the audit trail."""

from __future__ import annotations

import getpass
from typing import Any

import aiohttp
import pytest
from cli_process import cli_runner

from orchestrator.app import Orchestrator
from orchestrator.engine import Engine
from orchestrator.pausing import pause_workflow
from orchestrator.settings import Settings
from orchestrator.spec import OnPause, TaskSpec, WorkflowSpec
from sources.models import ScheduleTrigger, WebhookTrigger

pytestmark = pytest.mark.timeout(120)

SALES = WorkflowSpec(
    name="sales",
    params={"n": 0},
    owner="team-finance",
    tags=("finance", "daily"),
    on_pause=OnPause.COALESCE,
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(
        ScheduleTrigger(cron="0 2 * * *"),
        WebhookTrigger(hook="sales", auth="none", params={"n": "{{ payload.n }}"}),
    ),
)
ADS = WorkflowSpec(
    name="ads",
    owner="team-growth",
    tags=("daily",),
    tasks=(TaskSpec(id="t", handler="noop"),),
)
PLAIN = WorkflowSpec(name="plain", tasks=(TaskSpec(id="t", handler="noop"),))
ALL = [SALES, ADS, PLAIN]


async def test_pause_list_and_unpause_over_http(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0, poll_interval_s=0.2)
    async with Orchestrator(settings, db_url, workflows=ALL, http=True) as orch:
        assert orch.http is not None and orch.engine is not None and orch.intake is not None
        base = f"http://127.0.0.1:{orch.http.port}/api/v1"
        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
                async with http.request(method, base + path, **kw) as resp:
                    return resp.status, await resp.json(content_type=None)

            status, listed = await call("GET", "/workflows")
            assert status == 200
            by_name = {w["name"]: w for w in listed["items"]}
            assert sorted(by_name) == ["ads", "plain", "sales"]
            sales = by_name["sales"]
            assert (sales["owner"], sales["tags"], sales["on_pause"]) == (
                "team-finance",
                ["finance", "daily"],
                "coalesce",
            )
            assert sales["paused"] is False and sales["next_schedule"] is not None
            assert sales["triggers"] == ["schedule cron '0 2 * * *' UTC", "webhook hook sales"]
            assert by_name["plain"]["next_schedule"] is None
            # The params a run accepts, by name: a list, empty when none are declared.
            assert (sales["params"], by_name["plain"]["params"]) == (["n"], [])

            status, daily = await call("GET", "/workflows?tag=daily")
            assert sorted(w["name"] for w in daily["items"]) == ["ads", "sales"]
            status, growth = await call("GET", "/workflows?owner=team-growth&tag=daily")
            assert [w["name"] for w in growth["items"]] == ["ads"]
            assert (await call("GET", "/workflows?owner=nobody"))[1] == {
                "items": [],
                "next": None,
            }
            # Pages by name; the next link keeps the filters.
            status, page = await call("GET", "/workflows?limit=1&tag=daily")
            assert [w["name"] for w in page["items"]] == ["ads"]
            assert page["next"] is not None and "tag=daily" in page["next"]
            async with http.get(f"http://127.0.0.1:{orch.http.port}{page['next']}") as resp:
                page = await resp.json()
            assert [w["name"] for w in page["items"]] == ["sales"] and page["next"] is None
            for query, name in (("limit=0", "limit"), ("paused=maybe", "paused")):
                status, bad = await call("GET", "/workflows?" + query)
                assert status == 400 and bad["errors"][0]["name"] == name, bad

            status, paused = await call(
                "POST", "/workflows/sales/pause", json={"reason": "provider outage"}
            )
            assert (status, paused) == (200, {"workflow": "sales", "paused": True, "changed": True})
            status, again = await call("POST", "/workflows/sales/pause", json={})
            assert (status, again["changed"]) == (200, False)

            # A manual trigger of the paused workflow is recorded and held: 202.
            status, triggered = await call("POST", "/workflows/sales/runs", json={})
            assert status == 202 and triggered["paused"] is True and triggered["run_ids"] == []
            status, one = await call("GET", "/workflows/sales")
            assert status == 200 and one["paused"] is True and one["buffered"] == 1
            status, only = await call("GET", "/workflows?paused=true")
            assert [w["name"] for w in only["items"]] == ["sales"]
            status, others = await call("GET", "/workflows?paused=false")
            assert [w["name"] for w in others["items"]] == ["ads", "plain"]
            assert one["pause_reason"] == "provider outage"
            assert one["paused_by"] == "api:127.0.0.1"

            status, done = await call(
                "POST", "/workflows/sales/unpause", json={"reason": "provider back"}
            )
            assert status == 200 and done["changed"] is True and len(done["run_ids"]) == 1
            status, one = await call("GET", "/workflows/sales")
            assert one["paused"] is False and one["buffered"] == 0
            assert one["last_run_id"] == done["run_ids"][0] and one["last_run_state"] == "running"
            status, noop = await call("POST", "/workflows/sales/unpause", json={})
            assert (status, noop["changed"], noop["run_ids"]) == (200, False, [])

            # 4xx cases, each naming what is wrong and changing nothing.
            for method, path in (
                ("GET", "/workflows/nope"),
                ("POST", "/workflows/nope/pause"),
                ("POST", "/workflows/nope/unpause"),
            ):
                status, missing = await call(method, path, json={})
                assert status == 404 and "'nope'" in missing["detail"], (path, missing)
            for body, field in (
                ({"reason": 5}, "reason"),
                ({"hold_running": "yes"}, "hold_running"),
                ({"why": "x"}, "why"),
                ([1], "body"),
            ):
                status, bad = await call("POST", "/workflows/ads/pause", json=body)
                assert status == 400 and bad["errors"][0]["name"] == field, bad
            status, bad = await call(
                "POST",
                "/workflows/ads/pause",
                data=b"{oops",
                headers={"Content-Type": "application/json"},
            )
            assert status == 400 and "not valid JSON" in bad["detail"]
            status, bad = await call("POST", "/workflows/ads/unpause", json={"hold_running": True})
            assert status == 400 and bad["errors"][0]["name"] == "hold_running"
            assert not (await call("GET", "/workflows/ads"))[1]["paused"]

            status, held = await call("GET", "/workflows/sales/held?state=started")
            assert status == 200 and [h["source"] for h in held["items"]] == ["manual"]
            assert held["items"][0]["run_id"] == done["run_ids"][0]
            status, bad = await call("GET", "/workflows/sales/held?state=lost")
            assert status == 400 and bad["errors"][0]["name"] == "state"
            assert (await call("GET", "/workflows/nope/held"))[0] == 404
            status, audit = await call("GET", "/audit?workflow=sales")
            assert [(e["action"], e["actor"], e["reason"]) for e in audit["items"]] == [
                ("unpause", "api:127.0.0.1", "provider back"),
                ("pause", "api:127.0.0.1", "provider outage"),
            ]


async def test_pause_unpause_workflows_and_runs_from_the_cli(db_url: str, engine: Engine) -> None:
    await engine.register(ALL)
    cli = cli_runner(db_url)

    paused = cli("pause", "ads", "--reason", "quota")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused ads", paused.stderr
    assert "paused already" in cli("pause", "ads").stdout
    listed = cli("workflows")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[2:]}
    assert "paused (buffer)" in lines["ads"] and "team-growth" in lines["ads"]
    assert "active" in lines["sales"] and "finance,daily" in lines["sales"]
    finance = cli("workflows", "--tag", "finance").stdout.splitlines()[2:]
    assert [line.split()[0] for line in finance] == ["sales"]
    assert "no workflow owned by 'nobody'" in cli("workflows", "--owner", "nobody").stdout
    described = cli("workflows", "ads").stdout
    assert "PAUSED since" in described and "cli:" in described and "quota" in described

    # A manual trigger while paused is recorded and says so (exit 2, no run id).
    triggered = cli("trigger", "ads")
    assert triggered.returncode == 2 and "is paused" in triggered.stderr
    assert "1 held run(s) started" in cli("unpause", "ads", "--reason", "quota raised").stdout
    assert "not paused" in cli("unpause", "ads").stdout
    await engine.trigger("sales", actor="test")
    by_owner = cli("runs", "--owner", "team-growth").stdout.splitlines()[2:]
    assert [line.split()[1] for line in by_owner] == ["ads"]
    by_tag = cli("runs", "--tag", "daily").stdout.splitlines()[2:]
    assert sorted(line.split()[1] for line in by_tag) == ["ads", "sales"]
    held = cli("held", "ads")
    assert held.returncode == 0 and "started" in held.stdout and "manual" in held.stdout
    audit = cli("audit", "--workflow", "ads").stdout
    assert f"cli:{getpass.getuser()}" in audit and "quota raised" in audit

    for args, message in (
        (("pause", "nope"), "unknown workflow 'nope'"),
        (("unpause", "nope"), "unknown workflow 'nope'"),
        (("held", "nope"), "unknown workflow 'nope'"),
        (("pause", "ads", "--task", "t", "--hold-running"), "--hold-running"),
    ):
        refused = cli(*args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)


async def test_a_paused_workflow_still_lists_its_next_schedule(engine: Engine) -> None:
    from orchestrator.workflow_list import list_workflows

    await engine.register(ALL)
    await pause_workflow(engine, "sales", actor="test")
    [sales] = await list_workflows(engine.db, owner="team-finance")
    assert sales.paused and sales.next_schedule is not None
    assert sales.next_schedule.hour == 2 and sales.next_schedule.minute == 0


STATE_OF_RUN = "SELECT state::text FROM task_instances WHERE run_id = $1"


async def _task_states(orch: Orchestrator, run_id: int) -> dict[str, str]:
    assert orch.db is not None
    async with orch.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT task_id, state::text AS state FROM task_instances WHERE run_id = $1", run_id
        )
    return {r["task_id"]: r["state"] for r in rows}


async def test_hold_running_holds_the_tasks_in_flight_until_unpause(db_url: str) -> None:
    settings = Settings(worker_slots=0, http_port=0, poll_interval_s=0.2)
    async with Orchestrator(settings, db_url, workflows=ALL, http=True) as orch:
        assert orch.http is not None and orch.engine is not None
        run_id = await orch.engine.trigger("ads")
        assert await _task_states(orch, run_id) == {"t": "queued"}
        base = f"http://127.0.0.1:{orch.http.port}/api/v1/workflows/ads"
        async with aiohttp.ClientSession() as http:
            body = {"reason": "provider outage", "hold_running": True}
            async with http.post(base + "/pause", json=body) as resp:
                assert resp.status == 200, await resp.text()
            assert await _task_states(orch, run_id) == {"t": "held"}  # no slot, visible
            async with http.post(base + "/unpause", json={"reason": "back"}) as resp:
                assert resp.status == 200, await resp.text()
        assert await _task_states(orch, run_id) == {"t": "queued"}
        assert orch.db is not None
        from orchestrator import audit

        actions = [e.action for e in await audit.entries(orch.db, workflow="ads")]
        # The workflow's pause and its tasks' hold, then both lifted.
        assert sorted(actions) == ["pause", "pause", "unpause", "unpause"]


async def test_a_single_task_is_held_and_released_from_the_cli(db_url: str, engine: Engine) -> None:
    await engine.register(ALL)
    run_id = await engine.trigger("plain")

    cli = cli_runner(db_url)

    held = cli("pause", "plain", "--task", "t", "--reason", "optimizer down")
    assert held.returncode == 0, held.stderr
    assert "paused task t of plain" in held.stdout
    async with engine.db.pool.acquire() as conn:
        state = await conn.fetchval(
            "SELECT state::text FROM task_instances WHERE run_id = $1", run_id
        )
    assert state == "held"
    released = cli("unpause", "plain", "--task", "t")
    assert released.returncode == 0, released.stderr
    async with engine.db.pool.acquire() as conn:
        state = await conn.fetchval(
            "SELECT state::text FROM task_instances WHERE run_id = $1", run_id
        )
    assert state == "queued"
    unknown = cli("pause", "plain", "--task", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr

"""``--json`` on the commands that list or show: it parses and has the shapes
the API's OpenAPI document states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_process import cli_runner
from pydantic import TypeAdapter

from handlers import builtin_registry
from orchestrator.api_admin import PoolList, TokenList
from orchestrator.api_alerts import AlertList
from orchestrator.api_datasets import DatasetList
from orchestrator.api_events import EventDetail, EventSummary
from orchestrator.api_models import AuditPage, RunDetail, RunPage, WorkflowList
from orchestrator.app import Orchestrator
from orchestrator.intake import Event, Intake
from orchestrator.run_waiter import wait_for_runs
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from orchestrator.states import RunState
from orchestrator.workflow_list import WorkflowSummary

ROOT = Path(__file__).resolve().parents[2]
SPEC = WorkflowSpec(name="greeting", tasks=(TaskSpec(id="say", handler="noop"),))


def cli_json(db_url: str, *args: str) -> Any:
    out = cli_runner(db_url)(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


async def test_json_output_parses_and_matches_the_api_shapes(db_url: str) -> None:
    async with Orchestrator(
        Settings(worker_slots=1), db_url, registry=builtin_registry(), workflows=[SPEC]
    ) as orch:
        assert orch.engine is not None and orch.db is not None
        run_id = await orch.engine.trigger("greeting")
        assert (await wait_for_runs(orch.db, [run_id], timeout=20))[run_id] == RunState.SUCCESS
        await orch.engine.set_pool("gpu", 2, actor="cli:ana", reason="quota")
        await Intake(orch.engine).ingest(
            [Event(source="kafka", channel="nobody-listens", dedup_key="k-1", payload={"a": 1})]
        )

    runs = cli_json(db_url, "runs")
    [summary] = RunPage.model_validate(runs).items
    assert summary.id == run_id and summary.state == "success"

    shown = RunDetail.model_validate(cli_json(db_url, "show", str(run_id)))
    assert shown.id == run_id and [t.task_id for t in shown.tasks] == ["say"]
    assert shown.tasks[0].state == "success"

    entries = AuditPage.model_validate(cli_json(db_url, "audit")).items
    assert [(e.actor, e.action, e.reason) for e in entries] == [("cli:ana", "pool", "quota")]

    pools = PoolList.model_validate(cli_json(db_url, "pools"))
    assert {p.name: p.slots for p in pools.items}["gpu"] == 2

    listed = WorkflowList.model_validate(cli_json(db_url, "workflows"))
    [described] = listed.items
    assert described.name == "greeting" and described.last_run_id == run_id
    one = TypeAdapter(WorkflowSummary).validate_python(cli_json(db_url, "workflows", "greeting"))
    assert one == described

    letters = cli_json(db_url, "dead-letters")
    assert letters == {"items": [], "next": None}
    # Every list has the API's one envelope, {"items": [...], "next": ...}.
    assert AlertList.model_validate(cli_json(db_url, "alerts")).items == []
    assert DatasetList.model_validate(cli_json(db_url, "datasets")).next is None
    assert TokenList.model_validate(cli_json(db_url, "tokens", "list")).items == []

    events = cli_json(db_url, "events")
    assert set(events) == {"items", "next"} and events["next"] is None
    [event] = TypeAdapter(list[EventSummary]).validate_python(events["items"])
    assert (event.source, event.status, event.run_ids) == ("kafka", "recorded", [])
    shown_event = EventDetail.model_validate(cli_json(db_url, "events", "show", str(event.id)))
    assert shown_event.channel == "nobody-listens" and shown_event.payload == {"a": 1}

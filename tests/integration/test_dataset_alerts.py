"""A stale dataset raises ``dataset_stale`` through the alert routes of the
workflows that write and read it: once per stale spell, whichever scheduler
sees it, signed and delivered to a local receiver, listed with its dataset."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from alert_receiver import Receiver
from cli_process import cli_runner
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.alerts import list_alerts
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK, ManualClock
from orchestrator.freshness import FreshnessWatch
from orchestrator.retention import prune
from orchestrator.run_waiter import wait_for_runs
from orchestrator.spec import WorkflowSpec
from orchestrator.states import RunState

pytestmark = pytest.mark.timeout(60)

SALES = "postgres://warehouse/sales_clean"


def specs(receiver: Receiver) -> list[WorkflowSpec]:
    producer = {
        "name": "extract",
        "tasks": [
            {
                "id": "publish",
                "handler": "noop",
                "outlets": [{"uri": SALES, "fresh_within": "26h"}],
            }
        ],
        "alerts": [{"name": "late_data", "on": ["dataset_stale"], "routes": [receiver.route()]}],
    }
    consumer = {
        "name": "report",
        "tasks": [{"id": "read", "handler": "noop", "inlets": [{"uri": SALES}]}],
        # Its failures go elsewhere: only the dataset_stale rule matches.
        "alerts": [
            {"on": ["run_failed"], "routes": [receiver.route("/failures")]},
            {"on": ["dataset_stale"], "routes": [receiver.route("/report")]},
        ],
    }
    return [WorkflowSpec.model_validate(producer), WorkflowSpec.model_validate(consumer)]


async def test_a_stale_dataset_alerts_each_reader_and_writer_once_per_spell(
    db_url: str, receiver: Receiver
) -> None:
    async with Orchestrator(
        suite_settings(worker_slots=4, roles="worker", public_url="https://orch.example"),
        db_url,
        registry=builtin_registry(),
        workflows=specs(receiver),
    ) as o:
        assert o.engine is not None and o.db is not None
        db = o.db

        async def publish() -> None:
            run_id = await o.engine.trigger("extract", actor="test")  # type: ignore[union-attr]
            assert (await wait_for_runs(db, [run_id], timeout=20))[run_id] == RunState.SUCCESS

        await publish()
        clock = ManualClock(SYSTEM_CLOCK.now())
        watch = FreshnessWatch(o.engine, clock)
        assert await watch.check() == []
        assert await list_alerts(db) == []

        await clock.advance(timedelta(hours=27))
        assert await watch.check() == [SALES]
        # Another scheduler (or this one restarted) sees the same spell: no new alert.
        assert await FreshnessWatch(o.engine, clock).check() == [SALES]
        assert await watch.check() == []
        found = await list_alerts(db)
        assert sorted((a.rule, a.workflow) for a in found) == [
            ("extract:late_data", "extract"),
            ("report:1", "report"),
        ]
        assert {(a.kind, a.run_id, a.dataset) for a in found} == {("dataset_stale", None, SALES)}
        assert watch.raised == 2

        await eventually(lambda: _async(len(receiver.got) == 2), what="both alerts delivered")
        paths = sorted(path for path, _, _ in receiver.got)
        assert paths == ["/alerts", "/report"]
        body = next(b for p, _, b in receiver.got if p == "/alerts")
        assert (body["kind"], body["dataset"], body["run_id"]) == ("dataset_stale", SALES, None)
        assert "expected within 93600s" in body["detail"]
        assert body["links"]["api"] == (
            "https://orch.example/api/v1/lineage?node=postgres%3A%2F%2Fwarehouse%2Fsales_clean"
        )
        listed = await asyncio.to_thread(cli_runner(db_url), "alerts")
        assert SALES in listed.stdout and "dataset_stale" in listed.stdout

        # Updated, it is fresh; stale again later, it alerts again. (The
        # update is stamped with the real time: the watch's clock starts there.)
        await publish()
        watch.clock = clock = ManualClock(SYSTEM_CLOCK.now())
        assert await watch.check() == []
        assert watch.stale == set()
        await clock.advance(timedelta(hours=27))
        assert await watch.check() == [SALES]
        assert len(await list_alerts(db)) == 4
        await eventually(lambda: _async(len(receiver.got) == 4), what="the second spell's")

        # Retention prunes a dataset's alerts by age, as it does runs.
        pruned = await prune(db, SYSTEM_CLOCK.now() + timedelta(days=1))
        assert pruned.dataset_alerts == 4
        assert await list_alerts(db) == []


async def _async(value: Any) -> Any:
    return value

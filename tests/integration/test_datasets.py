"""Datasets: updates recorded with the producing task's success, dataset
triggers (any, all, partitions), external updates, and what runs show."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cli_process import cli_runner
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.context import TaskContext
from orchestrator.dataset_refs import DatasetRef
from orchestrator.dataset_triggers import DatasetTrigger
from orchestrator.datasets import Datasets, DatasetUpdate
from orchestrator.engine import Engine
from orchestrator.freshness import FreshnessWatch
from orchestrator.lineage import DatasetNode, Lineage, dataset_list, freshness
from orchestrator.loader import load_path
from orchestrator.metrics import METRICS
from orchestrator.pausing import pause_workflow
from orchestrator.registry import HandlerRegistry
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.store import connect
from orchestrator.testing import WorkflowTest
from sources.kafka import KafkaSource
from sources.kafka_publish import publish

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SALES = "postgres://warehouse/sales_clean"
STOCK = "s3://lake/stock"


async def rows(ctx: TaskContext, n: int = 3) -> dict[str, Any]:
    return {"rows": n}


async def check(ctx: TaskContext, ok: bool = True) -> None:
    if not ok:
        raise ValueError("bad output")


def registry() -> HandlerRegistry:
    reg = builtin_registry()
    reg.register("rows", rows)
    reg.register("check", check)
    return reg


def producer(name: str, uri: str, *, checked: bool = False) -> WorkflowSpec:
    """Loads, optionally checks, then publishes ``uri`` (the outlet)."""
    tasks = [TaskSpec(id="load", handler="rows", inputs={"n": "{{ params.n }}"})]
    if checked:
        tasks.append(
            TaskSpec(
                id="quality",
                handler="check",
                upstream=("load",),
                inputs={"ok": "{{ params.ok }}"},
                retry=RetryPolicy(max_attempts=1),
            )
        )
    tasks.append(
        TaskSpec(
            id="publish",
            handler="rows",
            upstream=(tasks[-1].id,),
            inputs={"n": "{{ params.n }}"},
            outlets=(DatasetRef(uri=uri),),
        )
    )
    return WorkflowSpec(name=name, params={"n": 1, "ok": True}, tasks=tuple(tasks))


def consumer(name: str, trigger: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        tasks=(TaskSpec(id="use", handler="echo", inputs={"got": "{{ params }}"}),),
        triggers=(DatasetTrigger.model_validate({"source": "dataset", **trigger}),),
    )


async def runs_of(wt: WorkflowTest, workflow: str) -> list[Any]:
    assert wt.orchestrator.db is not None
    return list(
        await wt.orchestrator.db.pool.fetch(
            "SELECT id, state::text AS state, params::text AS params, logical_date, event_id"
            " FROM runs WHERE workflow = $1 ORDER BY id",
            workflow,
        )
    )


async def test_producer_consumer_chain(pg_admin_url: str) -> None:
    """Three workflows over two datasets, driven by real runs: the update is
    recorded with the success and starts the next workflow, params mapped."""
    wfs = [
        producer("extract", SALES),
        WorkflowSpec(
            name="transform",
            tasks=(
                TaskSpec(
                    id="build",
                    handler="rows",
                    inputs={"n": 7},
                    inlets=(DatasetRef(uri=SALES),),
                    outlets=(DatasetRef(uri=STOCK, fresh_within="26h"),),
                ),
            ),
            triggers=(
                DatasetTrigger.model_validate(
                    {"source": "dataset", "any": [SALES], "params": {"rows": "{{ payload.rows }}"}}
                ),
            ),
        ),
        consumer("report", {"any": [STOCK]}),
    ]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        run = await wt.run("extract", {"n": 42})
        assert run.state == "success"
        db = wt.orchestrator.db
        assert db is not None
        update = await db.pool.fetchrow("SELECT * FROM dataset_events WHERE uri = $1", SALES)
        assert update["run_id"] == run.run_id and update["task_id"] == "publish"
        transform = await eventually(lambda: _one(runs_of(wt, "transform")))
        assert '"rows": 42' in transform["params"]
        assert (await wt.wait(transform["id"])).state == "success"
        report = await eventually(lambda: _one(runs_of(wt, "report")))
        assert (await wt.wait(report["id"])).state == "success"
        causes = await db.pool.fetch(
            "SELECT d.uri FROM dataset_event_uses u JOIN dataset_events d"
            " ON d.id = u.dataset_event_id WHERE u.trigger_event_id = $1",
            report["event_id"],
        )
        assert [c["uri"] for c in causes] == [STOCK]


async def _one(rows: Any) -> Any:
    found = await rows
    return found[0] if len(found) == 1 else None


async def test_failed_quality_check_announces_nothing(pg_admin_url: str) -> None:
    wfs = [producer("extract", SALES, checked=True), consumer("report", {"any": [SALES]})]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        run = await wt.run("extract", {"n": 1, "ok": False})
        assert run.state == "failed"
        db = wt.orchestrator.db
        assert db is not None
        assert await db.pool.fetchval("SELECT count(*) FROM dataset_events") == 0
        assert await runs_of(wt, "report") == []
        ok = await wt.run("extract", {"n": 1, "ok": True})
        assert ok.state == "success"
        assert await db.pool.fetchval("SELECT count(*) FROM dataset_events") == 1
        await eventually(lambda: _one(runs_of(wt, "report")))


def update(uri: str, key: str, date: str | None = None) -> DatasetUpdate:
    day = datetime.fromisoformat(date).replace(tzinfo=UTC) if date else None
    return DatasetUpdate(uri=uri, dedup_key=f"test:{key}", metadata={"k": key}, logical_date=day)


async def test_all_counts_each_dataset_once_in_any_order(pg_admin_url: str) -> None:
    wfs = [consumer("both", {"all": [SALES, STOCK], "params": {"last": "{{ meta.uri }}"}})]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        assert wt.orchestrator.engine is not None
        datasets = Datasets(wt.orchestrator.engine)
        # Sales twice before stock: one run, linked to all three updates.
        assert (await datasets.record([update(SALES, "s1")], actor="t"))[0].run_ids == []
        assert (await datasets.record([update(SALES, "s2")], actor="t"))[0].run_ids == []
        first = await datasets.record([update(STOCK, "k1")], actor="t")
        assert len(first[0].run_ids) == 1
        # Redelivered: nothing new.
        again = await datasets.record([update(STOCK, "k1")], actor="t")
        assert again[0].duplicate and again[0].run_ids == first[0].run_ids
        # The other order starts the next run.
        assert (await datasets.record([update(STOCK, "k2")], actor="t"))[0].run_ids == []
        second = await datasets.record([update(SALES, "s3")], actor="t")
        assert len(second[0].run_ids) == 1
        runs = await runs_of(wt, "both")
        assert [r["id"] for r in runs] == first[0].run_ids + second[0].run_ids
        db = wt.orchestrator.db
        assert db is not None
        used = await db.pool.fetch(
            "SELECT d.dedup_key FROM dataset_event_uses u"
            " JOIN dataset_events x ON x.id = u.dataset_event_id"
            " JOIN events d ON d.id = x.event_id"
            " WHERE u.trigger_event_id = $1 ORDER BY d.id",
            runs[0]["event_id"],
        )
        assert [u["dedup_key"] for u in used] == ["test:s1", "test:s2", "test:k1"]
        assert '"last": "s3://lake/stock"' in runs[0]["params"]


async def test_partitions_match_logical_dates(pg_admin_url: str) -> None:
    wfs = [consumer("daily", {"all": [SALES, STOCK], "partition": True})]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        assert wt.orchestrator.engine is not None
        datasets = Datasets(wt.orchestrator.engine)
        await datasets.record(
            [update(SALES, f"s{d}", f"2026-01-0{d}") for d in (1, 2, 3)], actor="t"
        )
        await datasets.record([update(STOCK, "k2", "2026-01-02")], actor="t")
        await datasets.record([update(STOCK, "k9", "2026-01-09")], actor="t")
        await datasets.record([update(STOCK, "k1", "2026-01-01")], actor="t")
        runs = await runs_of(wt, "daily")
        assert [r["logical_date"].date().isoformat() for r in runs] == ["2026-01-02", "2026-01-01"]


async def test_external_update_over_http_show_and_lineage(db_url: str) -> None:
    """An update reported through the API starts the consumer once (a repeat
    with the same key starts nothing); ``show``, ``lineage`` and ``datasets``
    say what happened; a paused consumer buffers the update's run."""
    wfs = [
        producer("extract", SALES),
        consumer("report", {"any": [SALES], "params": {"rows": "{{ payload.rows }}"}}),
    ]
    settings = suite_settings(worker_slots=0)
    async with Orchestrator(settings, db_url, workflows=wfs, http=True) as orch:
        assert orch.http is not None and orch.engine is not None
        base = f"http://127.0.0.1:{orch.http.port}/api/v1"
        path = "/datasets/" + quote(SALES, safe="") + "/events"
        async with aiohttp.ClientSession() as http:

            async def call(method: str, url: str, **kw: Any) -> tuple[int, Any]:
                async with http.request(method, base + url, **kw) as resp:
                    return resp.status, await resp.json(content_type=None)

            body = {"metadata": {"rows": 5}, "logical_date": "2026-03-01T00:00:00Z"}
            headers = {"Idempotency-Key": "load-1"}
            status, first = await call("POST", path, json=body, headers=headers)
            assert status == 202 and len(first["run_ids"]) == 1 and not first["duplicate"]
            status, again = await call("POST", path, json=body, headers=headers)
            assert status == 202 and again["duplicate"] and again["run_ids"] == first["run_ids"]
            status, bad = await call("POST", "/datasets/not-a-uri/events", json={})
            assert status == 400 and "not a dataset URI" in bad["detail"]
            status, bad = await call("POST", path, json={"rows": 5})
            assert status == 400 and "rows" in bad["detail"]

            run_id = first["run_ids"][0]
            status, caused = await call("GET", f"/runs/{run_id}/datasets")
            assert status == 200 and [u["uri"] for u in caused["caused_by"]] == [SALES]
            assert caused["caused_by"][0]["metadata"] == {"rows": 5}
            status, consumers = await call(
                "GET", "/datasets/" + quote(SALES, safe="") + "/consumers?logical_date=2026-03-01"
            )
            assert [c["run_id"] for c in consumers["items"]] == [run_id]
            status, graph = await call("GET", "/lineage?node=report&direction=upstream")
            assert status == 200
            assert [n["id"] for n in graph["nodes"]] == [
                "workflow:report",
                f"dataset:{SALES}",
                "workflow:extract",
            ]
            status, _ = await call("GET", "/lineage?node=nothing")
            assert status == 404
            status, listed = await call("GET", "/datasets")
            assert [d["uri"] for d in listed["items"]] == [SALES]
            assert listed["items"][0]["updates"] == 1

            await pause_workflow(orch.engine, "report", actor="test", reason="maintenance")
            status, held = await call("POST", path, json={"metadata": {"rows": 6}})
            assert status == 202 and held["run_ids"] == []
            assert orch.db is not None
            assert (
                await orch.db.pool.fetchval(
                    "SELECT count(*) FROM held_events WHERE workflow = 'report'"
                )
                == 1
            )

    cli = cli_runner(db_url)
    shown = cli("show", str(run_id))
    assert "caused by dataset updates:" in shown.stdout and SALES in shown.stdout
    lineage = cli("lineage", SALES, "--downstream", "--json")
    assert lineage.returncode == 0, lineage.stderr
    assert [n["id"] for n in json.loads(lineage.stdout)["nodes"]] == [
        f"dataset:{SALES}",
        "workflow:report",
    ]
    text = cli("lineage", "extract")
    assert f"extract --produces--> {SALES}" in text.stdout
    listed_cli = cli("datasets", "--json")
    assert json.loads(listed_cli.stdout)["items"][0]["updates"] == 2
    consumed = cli("datasets", SALES, "--date", "2026-03-01")
    assert f"{run_id}" in consumed.stdout and "report" in consumed.stdout


async def test_updates_from_the_kafka_topic(db_url: str, kafka_env: Any) -> None:
    """Messages on ORCHESTRATOR_DATASET_TOPIC are updates, each recorded once
    (a redelivery has the same offset); a malformed one is a dead letter."""
    topic = await kafka_env.create_topic("datasets")
    settings = kafka_env.settings(dataset_topic=topic, worker_slots=0)
    wfs = [consumer("report", {"any": [SALES]})]
    values = [
        {"uri": SALES, "logical_date": "2026-03-02", "metadata": {"rows": 9}},
        {"uri": "nope", "metadata": {}},
    ]
    await publish(settings, topic, values)
    source = KafkaSource(consumer_options=kafka_env.consumer_options)
    async with Orchestrator(settings, db_url, workflows=wfs, sources=[source]) as orch:
        db = orch.db
        assert db is not None
        runs = await eventually(
            lambda: _one(runs_of_db(db, "report")), timeout=30, what="the consumer's run"
        )
        letters = await eventually(
            lambda: db.pool.fetch("SELECT reason FROM dead_letter_events"),
            timeout=30,
            what="the dead letter",
        )
        assert "not a dataset URI" in letters[0]["reason"]
        update = await db.pool.fetchrow(
            "SELECT logical_date, metadata::text AS m FROM dataset_events"
        )
        assert update["logical_date"].date().isoformat() == "2026-03-02"
        assert json.loads(update["m"]) == {"rows": 9}
        assert runs["event_id"] is not None


async def runs_of_db(db: Any, workflow: str) -> list[Any]:
    return list(
        await db.pool.fetch(
            "SELECT id, state::text AS state, event_id FROM runs WHERE workflow = $1 ORDER BY id",
            workflow,
        )
    )


async def test_a_stale_dataset_on_an_injected_clock(
    pg_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """fresh_within: 26h. Fresh after its update, stale 27 hours later (one
    alert: a log line and a metric), fresh again after the next update."""
    wfs = [
        WorkflowSpec(
            name="extract",
            tasks=(
                TaskSpec(
                    id="publish",
                    handler="rows",
                    outlets=(DatasetRef(uri=SALES, fresh_within="26h"),),
                ),
            ),
        )
    ]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        db, engine = wt.orchestrator.db, wt.orchestrator.engine
        assert db is not None and engine is not None
        watch = FreshnessWatch(engine, wt.manual_clock)
        assert (await wt.run("extract", {})).state == "success"
        assert await watch.check() == []
        alerts = METRICS.dataset_stale_alerts._value.get()
        await wt.manual_clock.advance(timedelta(hours=27))
        with caplog.at_level(logging.WARNING, logger="orchestrator.freshness"):
            assert await watch.check() == [SALES]
        assert f"dataset {SALES} is stale" in caplog.text
        assert METRICS.dataset_stale_alerts._value.get() == alerts + 1
        assert METRICS.datasets_stale._value.get() == 1
        assert await watch.check() == []  # one alert per stale spell
        async with db.pool.acquire() as conn:
            listed = await dataset_list(conn, Lineage(), wt.manual_clock.now())
        assert [d["freshness"] for d in listed] == ["stale"]
        assert (await wt.run("extract", {})).state == "success"
        assert await watch.check() == []
        assert watch.stale == set()


def test_freshness_with_an_expected_cron() -> None:
    node = DatasetNode(SALES, fresh_within=timedelta(hours=2), cron="0 2 * * *")
    day = datetime(2026, 3, 2, tzinfo=UTC)
    updated = day.replace(hour=2, minute=30)
    assert freshness(node, updated, day.replace(hour=23)) == "fresh"
    # The next day's 02:00 update is due by 04:00.
    assert freshness(node, updated, day.replace(day=3, hour=3)) == "fresh"
    assert freshness(node, updated, day.replace(day=3, hour=5)) == "stale"
    assert freshness(node, None, day) == "never"
    assert freshness(DatasetNode(SALES), updated, day) is None


def chain_specs(count: int) -> list[WorkflowSpec]:
    """``count`` workflows in a chain: ``w{i}`` is triggered by ``ds{i-1}``
    and writes ``ds{i}`` (2 x ``count`` nodes)."""
    specs = []
    for i in range(count):
        triggers = (
            (DatasetTrigger.model_validate({"source": "dataset", "any": [f"s3://l/ds{i - 1}"]}),)
            if i
            else ()
        )
        specs.append(
            WorkflowSpec(
                name=f"w{i}",
                tasks=(
                    TaskSpec(id="t", handler="noop", outlets=(DatasetRef(uri=f"s3://l/ds{i}"),)),
                ),
                triggers=triggers,
            )
        )
    return specs


async def test_lineage_of_a_generated_thousand_node_graph(db_url: str) -> None:
    db = await connect(db_url, size=2)
    try:
        await Engine(db).register(chain_specs(500))
        lineage = Lineage()
        now = SYSTEM_CLOCK.now()
        async with db.pool.acquire() as conn:
            down = await lineage.query(conn, "s3://l/ds0", direction="downstream", now=now)
            assert len(down.nodes) == 999 and len(down.edges) == 998
            near = await lineage.query(conn, "w250", depth=2, now=now)
            assert [n["id"] for n in near.nodes] == [
                "workflow:w250",
                "dataset:s3://l/ds249",
                "dataset:s3://l/ds250",
                "workflow:w249",
                "workflow:w251",
            ]
            up = await lineage.query(conn, "s3://l/ds3", direction="upstream", now=now)
            assert [n["id"] for n in up.nodes][-1] == "workflow:w0" and len(up.nodes) == 8
            assert len((await lineage.graph(conn)).datasets) == 500
    finally:
        await db.close()


async def test_the_example_pair(pg_admin_url: str) -> None:
    """examples/sales_clean.yaml publishes what starts examples/sales_report.yaml."""
    loaded = load_path(EXAMPLES, base=builtin_registry())
    wfs = [loaded.workflows["sales_clean"], loaded.workflows["sales_report"]]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=loaded.handlers) as wt:
        produced = await wt.run("sales_clean", {"date": "2026-02-01", "rows": 7})
        assert produced.state == "success"
        report = await eventually(lambda: _one(runs_of(wt, "sales_report")))
        done = await wt.wait(report["id"])
        assert done.outputs["report"]["message"] == (
            f"sales report over 7 rows (from run {produced.run_id})"
        )


async def test_partition_matching_over_a_backfilled_range_of_real_runs(pg_admin_url: str) -> None:
    """Producers run for a range of logical dates (one with a templated
    outlet); the consumer runs once per date both have updated, with that
    date."""
    wfs = [
        producer("sales", SALES),
        producer("stock", "s3://lake/stock/{{ run.logical_date }}"),
        consumer("daily", {"all": [SALES, "s3://lake/stock/*"], "partition": True}),
    ]
    days = [datetime(2026, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    async with WorkflowTest(pg_admin_url, workflows=wfs, registry=registry()) as wt:
        engine = wt.orchestrator.engine
        assert engine is not None
        runs = [await engine.trigger("sales", {}, logical_date=d) for d in days]
        runs += [await engine.trigger("stock", {}, logical_date=d) for d in days[1:]]
        for run_id in runs:
            assert (await wt.wait(run_id)).state == "success"
        daily = await eventually(
            lambda: _when_count(runs_of(wt, "daily"), 2), what="a run per complete date"
        )
        assert sorted(r["logical_date"] for r in daily) == days[1:]
        db = wt.orchestrator.db
        assert db is not None
        uris = await db.pool.fetch("SELECT uri FROM dataset_events WHERE workflow = 'stock'")
        assert sorted(u["uri"] for u in uris) == [
            f"s3://lake/stock/{d.isoformat()}" for d in days[1:]
        ]


async def _when_count(rows: Any, n: int) -> Any:
    found = await rows
    return found if len(found) == n else None

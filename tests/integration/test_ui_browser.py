"""The web UI end to end in headless Chromium (Debian's ``chromium``, driven by
Playwright): sign in with a token, trigger ``daily_sales`` from its form and
watch its graph turn green live; read a failed attempt's log, clear it and
watch it succeed; pause a Kafka-fed workflow from the list, see its buffered
events, unpause, and read on a run's page the Kafka event that started it;
acknowledge the failed run's alert as an operator; read a dataset's
freshness and who writes and reads it; a viewer sees no actions and a forged
POST is refused.

One orchestrator and one browser serve the whole module. Screenshots of the
workflow list, a run graph and a task log are taken on the way: into the
folder ``ORCHESTRATOR_SCREENSHOTS`` names (``docs`` refreshes the README's),
else into a temporary one, so a test run leaves the checkout as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from eventually import eventually
from suite_settings import suite_settings

from handlers import builtin_registry
from orchestrator.alert_spec import AlertRule
from orchestrator.app import Orchestrator
from orchestrator.context import TaskContext
from orchestrator.loader import load_path
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.store import connect, create_database, drop_database
from orchestrator.tokens import Role, create
from sources.kafka import KafkaSource
from sources.kafka_broker import ensure_topics
from sources.kafka_config import make_producer
from sources.models import KafkaTrigger

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.skipif(
        async_playwright is None, reason="the playwright package is not installed (test extra)"
    ),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium to drive: install Debian's `chromium` package (.ci/run does)",
    ),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(60),
]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("ORCHESTRATOR_SCREENSHOTS") or tempfile.gettempdir())
WAIT_MS = 15_000

#: The first attempt of ``flaky`` fails; once cleared it succeeds.
_flaky_calls: list[int] = []


async def flaky(ctx: TaskContext) -> dict[str, Any]:
    _flaky_calls.append(ctx.attempt)
    if len(_flaky_calls) == 1:
        ctx.log.info("the warehouse is not there yet")
        raise RuntimeError("warehouse unreachable")
    ctx.log.info("loaded on the rerun")
    return {"loaded": True}


@dataclass
class Server:
    base: str
    operator: str
    viewer: str
    topic: str
    kafka: Any
    browser: Browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(
    pg_admin_url: str, template_db: str, kafka_bootstrap: str
) -> AsyncIterator[Server]:
    name = f"orch_ui_{uuid.uuid4().hex[:10]}"
    url = await create_database(pg_admin_url, name, template=template_db)
    topic = f"ui_{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, {topic: 1})
    registry = builtin_registry()
    registry.register("flaky", flaky)
    loaded = load_path(ROOT / "examples" / "daily_sales.yaml", base=registry)
    producer = load_path(ROOT / "examples" / "sales_clean.yaml", base=registry)
    workflows = [
        loaded.workflows["daily_sales"],
        producer.workflows["sales_clean"],
        WorkflowSpec(
            name="nightly_load",
            owner="data-eng",
            tags=("warehouse",),
            tasks=(
                TaskSpec(id="extract", handler="noop"),
                TaskSpec(
                    id="load",
                    handler="flaky",
                    upstream=("extract",),
                    retry=RetryPolicy(max_attempts=1),
                ),
                TaskSpec(id="report", handler="noop", upstream=("load",)),
            ),
            alerts=(
                AlertRule.model_validate(
                    {"on": ["run_failed"], "routes": [{"type": "log"}], "require_ack": True}
                ),
            ),
        ),
        WorkflowSpec(
            name="orders_feed",
            tasks=(TaskSpec(id="take", handler="noop"),),
            triggers=(KafkaTrigger(topic=topic, params={}),),
        ),
    ]
    embedded = not os.environ.get("ORCHESTRATOR_TEST_KAFKA")
    settings = suite_settings(
        api_auth="tokens",
        kafka_bootstrap=kafka_bootstrap,
        kafka_group_id=f"ui_{uuid.uuid4().hex[:8]}",
        **({"kafka_idempotent_producer": False} if embedded else {}),
    )
    db = await connect(url, size=2)
    try:
        operator, _ = await create(db, "ops", Role.OPERATOR, actor="test")
        viewer, _ = await create(db, "watcher", Role.VIEWER, actor="test")
    finally:
        await db.close()
    from sources.kafka import EMBEDDED_CONSUMER_OPTIONS

    async with (
        Orchestrator(
            settings,
            url,
            registry=registry,
            workflows=workflows,
            sources=[KafkaSource(consumer_options=dict(EMBEDDED_CONSUMER_OPTIONS))],
            http=True,
        ) as orch,
        async_playwright() as playwright,
    ):
        assert orch.http is not None
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield Server(
                f"http://127.0.0.1:{orch.http.port}", operator, viewer, topic, settings, browser
            )
        finally:
            await browser.close()
    await drop_database(pg_admin_url, name)


async def signed_in(server: Server, token: str) -> Page:
    context = await server.browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(server.base + "/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    return page


async def give_reason(page: Page, reason: str) -> None:
    await page.locator("#reason-text").fill(reason)
    await page.locator("#reason-ok").click()


async def test_trigger_daily_sales_from_its_form_and_watch_the_graph_turn_green(
    server: Server,
) -> None:
    page = await signed_in(server, server.operator)
    await page.get_by_role("link", name="daily_sales").click()
    # The form is generated from the params, defaults filled in.
    await expect(page.locator("#param-date")).to_have_value("2026-01-01")
    await page.locator("#param-date").fill("2026-02-01")
    await page.get_by_role("button", name="Trigger run").click()
    nodes = page.locator("g.node")
    await expect(nodes).to_have_count(7)
    await expect(page.locator('g.node[data-state="success"]')).to_have_count(7)
    await expect(page.locator("#run-state")).to_contain_text("success")
    await page.locator("#selected-run a").click()
    await expect(page.locator("#run-state")).to_contain_text("success")
    await expect(page.locator(".gantt .bar")).to_have_count(7)
    await page.screenshot(path=str(SHOTS / "ui-run-graph.png"))


async def test_read_the_failed_attempts_log_clear_it_and_watch_it_succeed(
    server: Server,
) -> None:
    page = await signed_in(server, server.operator)
    await page.get_by_role("link", name="nightly_load").click()
    await page.get_by_role("button", name="Trigger run").click()
    await expect(page.locator("#run-state")).to_contain_text("failed")
    await page.locator("#selected-run a").click()
    load = page.locator('g.node[data-task="load"]')
    await expect(load).to_have_attribute("data-state", "failed")
    await load.focus()
    await page.keyboard.press("Enter")  # keyboard reaches every task
    await expect(page.locator("#task-log")).to_contain_text("the warehouse is not there yet")
    await expect(page.locator("#task-panel")).to_contain_text("warehouse unreachable")
    await page.screenshot(path=str(SHOTS / "ui-task-log.png"))
    await page.get_by_role("button", name="Clear failed").click()
    await give_reason(page, "the warehouse is back")
    await expect(load).to_have_attribute("data-state", "success")
    await expect(page.locator('g.node[data-task="report"]')).to_have_attribute(
        "data-state", "success"
    )
    await expect(page.locator("#run-state")).to_contain_text("success")
    await expect(page.locator("#task-panel")).to_contain_text("success")
    # The open panel re-read the task when it changed: the old error is gone.
    await expect(page.locator("#task-error")).to_have_count(0)


async def test_acknowledge_the_failed_runs_alert(server: Server) -> None:
    page = await signed_in(server, server.operator)
    await page.get_by_role("link", name="Alerts").click()
    row = page.locator("tr", has_text="nightly_load")
    await row.get_by_role("button", name="Acknowledge").click()
    await give_reason(page, "warehouse restarted")
    await expect(row).to_contain_text("acked by ops")
    await expect(row).to_contain_text("warehouse restarted")


async def test_datasets_show_freshness_and_who_writes_and_reads_them(server: Server) -> None:
    page = await signed_in(server, server.viewer)
    await page.get_by_role("link", name="Datasets").click()
    row = page.locator("tr", has_text="postgres://warehouse/sales_clean")
    # Declared fresh_within: 26h and never updated yet.
    await expect(row).to_contain_text("never")
    await expect(row).to_contain_text("(within 26h)")
    await expect(row).to_contain_text("sales_clean.publish")
    await expect(page.locator("tr", has_text="postgres://warehouse/sales_raw")).to_contain_text(
        "sales_clean.clean"
    )


async def test_pause_from_the_list_buffer_kafka_events_then_unpause(server: Server) -> None:
    page = await signed_in(server, server.operator)
    switch = page.get_by_role("switch", name="orders_feed paused")
    await expect(switch).to_have_attribute("aria-checked", "false")
    await switch.click()
    await give_reason(page, "upstream fix in progress")
    await expect(switch).to_have_attribute("aria-checked", "true")
    producer = make_producer(server.kafka, linger_ms=2)
    await producer.start()
    try:
        for n in range(3):
            await (await producer.send(server.topic, orjson.dumps({"n": n}), partition=0))
    finally:
        await producer.stop()
    row = page.locator("tr[data-workflow=orders_feed]")
    await expect(row.locator(".buffered")).to_contain_text("3 buffered", timeout=30_000)
    await switch.click()
    await give_reason(page, "fixed")
    await expect(switch).to_have_attribute("aria-checked", "false")
    await expect(row.locator(".sq.st-success")).to_have_count(3)
    await page.screenshot(path=str(SHOTS / "ui-workflows.png"))
    # A run's page names the event that started it: source, topic, payload.
    await row.locator(".sq.st-success").first.click()
    started = page.locator("#started-by")
    await expect(started.locator("#started-by-event")).to_contain_text(f"kafka · {server.topic}")
    await started.get_by_text("Payload and headers").click()
    await expect(started.locator("pre.payload")).to_contain_text('"n"')


async def test_a_viewer_sees_no_actions_and_forged_posts_are_refused(server: Server) -> None:
    page = await signed_in(server, server.viewer)
    await expect(page.locator("tr[data-workflow=daily_sales]")).to_be_visible()
    await expect(page.get_by_role("switch")).to_have_count(0)
    await page.get_by_role("link", name="nightly_load").click()
    await expect(page.locator("g.node")).to_have_count(3)
    await expect(page.get_by_role("button", name="Trigger run")).to_have_count(0)
    await page.locator("#selected-run a").click()
    await expect(page.locator("#run-state")).to_be_visible()
    await expect(page.get_by_role("button", name="Clear failed")).to_have_count(0)
    await expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)

    async def post(target: Page, csrf: bool) -> int:
        status: int = await target.evaluate(
            """async (csrf) => {
                const info = await (await fetch('/api/v1/session')).json();
                const headers = {'Content-Type': 'application/json'};
                if (csrf) headers['X-CSRF-Token'] = info.csrf;
                const r = await fetch('/api/v1/workflows/daily_sales/pause',
                    {method: 'POST', headers, body: '{"reason": "forged"}'});
                return r.status;
            }""",
            csrf,
        )
        return status

    assert await post(page, csrf=True) == 403  # the role may not, header or not
    operator = await signed_in(server, server.operator)
    assert await post(operator, csrf=False) == 403  # the cookie alone is not enough

    async def still_running() -> bool:
        return (await post(page, csrf=False)) == 403

    await eventually(still_running, timeout=5, what="refused again")

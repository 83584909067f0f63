"""The CLI as a user runs it: real processes, a real database, real files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from eventually import wait_until

from handlers import builtin_registry
from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.store import Database

EXE = [sys.executable, "-m", "orchestrator.cli"]
ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Server:
    """A long-running `orchestrator run|dev` whose output is kept in a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [*EXE, *args], stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.output()}")
            return text in self.output()

        wait_until(seen, timeout=timeout, what=repr(text))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def server_cleanup() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


CYCLE_YAML = """
name: loopy
tasks:
  - {id: a, handler: noop, upstream: [c]}
  - {id: b, handler: noop, upstream: [a]}
  - {id: c, handler: noop, upstream: [b]}
"""


def test_validate_accepts_the_examples_and_names_every_error(tmp_path: Path) -> None:
    ok = cli("validate", str(ROOT / "examples"), env=base_env())
    assert ok.returncode == 0, ok.stderr
    assert "ok  daily_sales (7 tasks" in ok.stdout

    (tmp_path / "loopy.yaml").write_text(CYCLE_YAML)
    (tmp_path / "unknown.yaml").write_text(
        "name: lost\ntasks:\n  - {id: x, handler: no_such_handler}\n"
    )
    bad = cli("validate", str(tmp_path), env=base_env())
    assert bad.returncode == 1
    assert "loopy.yaml" in bad.stderr and "workflow 'loopy'" in bad.stderr
    assert "a -> b -> c -> a" in bad.stderr or "cycle" in bad.stderr
    assert "unknown.yaml" in bad.stderr and "no_such_handler" in bad.stderr
    assert "task 'x'" in bad.stderr
    assert "2 error(s)" in bad.stderr


def test_a_bad_setting_is_named(tmp_path: Path) -> None:
    out = cli("runs", env=base_env(ORCHESTRATOR_WORKER_SLOTS="lots"), cwd=tmp_path)
    assert out.returncode == 2
    assert "ORCHESTRATOR_WORKER_SLOTS" in out.stderr
    missing = cli("runs", env=base_env(), cwd=tmp_path)
    assert missing.returncode == 2
    assert "ORCHESTRATOR_DATABASE_URL" in missing.stderr


def test_a_command_on_an_unmigrated_database_says_how_to_fix_it(
    empty_db_url: str, tmp_path: Path
) -> None:
    out = cli("runs", env=base_env(ORCHESTRATOR_DATABASE_URL=empty_db_url), cwd=tmp_path)
    assert out.returncode == 2
    assert "has not been migrated" in out.stderr and "orchestrator migrate" in out.stderr
    assert "Traceback" not in out.stderr


def test_migrate_is_idempotent(db_url: str, tmp_path: Path) -> None:
    env = base_env(ORCHESTRATOR_DATABASE_URL=db_url)
    first = cli("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schema is up to date" in first.stdout  # the test database is already migrated
    again = cli("migrate", env=env, cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


@pytest.mark.timeout(60)
def test_a_busy_http_port_is_a_clear_error_not_a_traceback(db_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(
            ORCHESTRATOR_DATABASE_URL=db_url,
            ORCHESTRATOR_HTTP_PORT=str(port),
            ORCHESTRATOR_ROLES="api",
        )
        out = cli("run", "--path", str(ROOT / "examples"), env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.timeout(120)
def test_run_then_trigger_wait_runs_the_example_end_to_end(
    db_url: str, tmp_path: Path, server_cleanup: list[Server]
) -> None:
    env = base_env(
        ORCHESTRATOR_DATABASE_URL=db_url,
        ORCHESTRATOR_POLL_INTERVAL_S="0.2",
        ORCHESTRATOR_HTTP_PORT="0",
    )
    examples = tmp_path / "wf"
    shutil.copytree(ROOT / "examples", examples)
    (examples / "broken_on_purpose.yaml").write_text(
        "name: always_fails\ndefault_retry: {max_attempts: 1}\n"
        "tasks:\n  - {id: boom, handler: fail}\n"
    )
    server = Server(["run", "--path", str(examples)], env, tmp_path, tmp_path / "run.log")
    server_cleanup.append(server)
    server.wait_for("workflow daily_sales")

    done = cli("trigger", "daily_sales", "--param", "date=2026-03-01", "--wait", env=env)
    assert done.returncode == 0, done.stderr
    run_id, final = done.stdout.split()
    assert final == "success"
    assert re.search(rf"run {run_id}: \d/7 tasks ended \(", done.stderr), done.stderr

    shown = cli("show", run_id, env=env)
    assert shown.returncode == 0, shown.stderr
    for task in (
        "extract_crm",
        "extract_erp",
        "join_sources",
        "validate_data",
        "transform_revenue",
        "load_warehouse",
        "notify_team",
    ):
        assert task in shown.stdout
    assert shown.stdout.count("success") >= 8  # the run and its 7 tasks
    assert '"date": "2026-03-01"' in shown.stdout
    assert "timeline:" in shown.stdout and "trigger rule all_success" in shown.stdout

    failed = cli("trigger", "always_fails", "--wait", env=env)
    assert failed.returncode == 1
    assert failed.stdout.split()[1] == "failed"

    listed = cli("runs", env=env)
    assert "daily_sales" in listed.stdout and "always_fails" in listed.stdout

    unknown = cli("trigger", "nope", env=env)
    assert unknown.returncode == 2 and "unknown workflow 'nope'" in unknown.stderr
    bad_json = cli("trigger", "daily_sales", "--params", "{not json", env=env)
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr

    assert server.stop(signal.SIGTERM) == 0


@pytest.mark.timeout(150)
def test_dev_starts_with_zero_setup_reloads_and_stops_cleanly(
    tmp_path: Path, server_cleanup: list[Server]
) -> None:
    env = base_env(ORCHESTRATOR_POLL_INTERVAL_S="0.2", ORCHESTRATOR_HTTP_PORT="0")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    dev = Server(["dev"], env, tmp_path, tmp_path / "dev.log")
    server_cleanup.append(dev)
    dev.wait_for("orchestrator dev is running", timeout=90)

    done = cli("trigger", "daily_sales", "--wait", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr + dev.output()
    assert done.stdout.split()[1] == "success"

    # A new file is picked up without a restart.
    extra = tmp_path / "examples" / "extra.yaml"
    extra.write_text("name: extra\ntasks:\n  - {id: hi, handler: echo, inputs: {v: 1}}\n")
    dev.wait_for("reload: extra is now version")
    first = cli("trigger", "extra", "--wait", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    # A broken edit is reported and the previous version stays active.
    extra.write_text("name: extra\ntasks:\n  - {id: hi, handler: echo, upstream: [ghost]}\n")
    dev.wait_for("previous versions stay active")
    assert "ghost" in dev.output()
    again = cli("trigger", "extra", "--wait", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    shown = cli("show", again.stdout.split()[0], env=env, cwd=tmp_path)
    assert '"v": 1' in shown.stdout

    # Every source works with zero setup: embedded Kafka, a signed webhook, a file.
    published = cli("publish", "orders", '{"order_id": "A-1"}', env=env, cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    port = re.search(r"HTTP API and webhooks on http://127\.0\.0\.1:(\d+)", dev.output())
    secret = re.search(r"(whsec_\S+)", dev.output())
    assert port and secret
    sent = cli(
        "hook-send",
        "sales",
        '{"type": "sale.created", "sale": {"id": "S-1"}}',
        "--url",
        f"http://127.0.0.1:{port.group(1)}",
        env={**env, "ORCHESTRATOR_WEBHOOK_SECRET_SALES": secret.group(1)},
        cwd=tmp_path,
    )
    assert sent.returncode == 0 and sent.stdout.startswith("202 "), sent.stdout + sent.stderr
    (tmp_path / "landing" / "crm").mkdir(parents=True)
    (tmp_path / "landing" / "crm" / "contacts.csv").write_text("id,name\n1,Ada\n")

    def all_sources_ran() -> bool:
        listed = cli("runs", "-s", "success", env=env, cwd=tmp_path).stdout
        return all(w in listed for w in ("orders", "sales_hook", "crm_files"))

    wait_until(all_sources_ran, timeout=60, interval=0.5, what="kafka, webhook and file runs")

    assert dev.stop(signal.SIGINT) == 0
    assert "embedded PostgreSQL stopped" in dev.output()
    assert not (tmp_path / ".orchestrator" / "dev.json").exists()


TYPED = WorkflowSpec(
    name="sales",
    description="Load one day of sales.",
    params={
        "date": {"type": "string", "format": "date", "required": True, "description": "The day."},
        "limit": {"type": "integer", "default": 10, "minimum": 1},
        "region": {"enum": ["emea", "amer"], "default": "emea"},
    },
    tasks=(TaskSpec(id="load", handler="echo", inputs={"date": "{{ params.date }}"}),),
)
ORDER = WorkflowSpec(
    name="order",
    params={"order_id": {"type": "string", "required": True}},
    tasks=(TaskSpec(id="t", handler="echo", inputs={"id": "{{ params.order_id }}"}),),
)
BREAKS = WorkflowSpec(
    name="breaks",
    tasks=(
        TaskSpec(
            id="boom",
            handler="fail",
            inputs={"message": "disk full"},
            retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01, jitter=0),
        ),
        TaskSpec(id="after", handler="noop", upstream=("boom",)),
    ),
)


Cli = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


@pytest.fixture
async def registered(db_url: str, tmp_path: Path) -> AsyncIterator[Cli]:
    """TYPED, ORDER and BREAKS registered, a worker running in this process, and a
    function that runs the CLI against the same database (in a thread)."""
    settings = Settings(worker_slots=2, poll_interval_s=0.2)
    env = base_env(ORCHESTRATOR_DATABASE_URL=db_url)

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(cli, *args, env=env, cwd=tmp_path)

    async with Orchestrator(
        settings, db_url, registry=builtin_registry(), workflows=[TYPED, ORDER, BREAKS]
    ) as orch:
        assert orch.db is not None
        yield run


async def test_trigger_refuses_undeclared_or_mistyped_params_and_names_them(
    registered: Cli, db: Database
) -> None:
    typo = await registered("trigger", "sales", "--param", "dat=2026-02-01")
    assert typo.returncode == 2, typo.stderr
    assert "'dat' is not a declared param (did you mean 'date'?)" in typo.stderr
    assert "Declared params: date (string, date, required), limit (integer" in typo.stderr
    wrong = await registered("trigger", "sales", "-p", "date=2026-02-01", "-p", "limit=ten")
    assert wrong.returncode == 2
    assert "'limit' should be a valid integer, got \"ten\"" in wrong.stderr
    missing = await registered("trigger", "sales")
    assert missing.returncode == 2 and "'date' is required but not given" in missing.stderr
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == 0

    # A param declared as a string keeps the text typed, even when it looks like JSON.
    number_like = await registered("trigger", "order", "-p", "order_id=1001")
    assert number_like.returncode == 0, number_like.stderr
    async with db.pool.acquire() as conn:
        params = await conn.fetchval("SELECT params::text FROM runs")
    assert json.loads(params) == {"order_id": "1001"}


async def test_a_mistyped_workflow_name_gets_the_closest_one_and_workflows_lists_them(
    registered: Cli,
) -> None:
    unknown = await registered("trigger", "sale")
    assert unknown.returncode == 2
    assert "unknown workflow 'sale'" in unknown.stderr
    assert "did you mean 'sales'?" in unknown.stderr
    assert "`orchestrator workflows`" in unknown.stderr
    backfill = await registered("backfill", "sale", "--start", "2026-01-01", "--end", "2026-01-02")
    assert backfill.returncode == 2 and "did you mean 'sales'?" in backfill.stderr

    listed = await registered("workflows")
    assert listed.returncode == 0, listed.stderr
    assert re.search(
        r"sales\s+active\s+\w{16}\s.*\s0\s+0\s+date, limit, region\s+Load one day",
        listed.stdout,
    )
    shown = await registered("workflows", "sales")
    assert "  date: string, date, required - The day." in shown.stdout
    assert '  region: one of "emea", "amer", default "emea"' in shown.stdout
    described = await registered("workflows", "sale")
    assert described.returncode == 2 and "did you mean 'sales'?" in described.stderr


async def test_trigger_wait_names_the_failed_task_its_attempt_and_error(
    registered: Cli,
) -> None:
    failed = await registered("trigger", "breaks", "--wait", "--timeout", "60")
    assert failed.returncode == 1
    run_id, state = failed.stdout.split()
    assert state == "failed"
    assert "task boom failed on attempt 2: TaskError: disk full" in failed.stderr
    assert "not run (upstream failed): after" in failed.stderr
    assert f"orchestrator show {run_id}" in failed.stderr

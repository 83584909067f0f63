"""``orchestrator run --webhook-processes 2``: two processes serve one port.

Real processes, real HTTP, a real database: every delivery answered 202 is
recorded exactly once whichever process took it, both processes take some,
the API answers on the same port, and no process outlives the orchestrator,
whether it stops or is killed. One that dies is started again; workflows
registered later reach every process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from eventually import eventually
from suite_settings import suite_settings

from orchestrator.app import Orchestrator
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import ConfigError
from orchestrator.signatures import generate_secret, standard_headers
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.models import WebhookTrigger
from sources.webhook import WebhookSource

ROOT = Path(__file__).resolve().parents[2]
HOOK = "orders_in"
WORKFLOW = f"""
name: take_order
tasks:
  - {{id: record, handler: noop}}
triggers:
  - source: webhook
    hook: {HOOK}
"""


class Run:
    """A running ``orchestrator run``, its JSON log lines kept in a file."""

    def __init__(self, tmp_path: Path, db_url: str, secret: str, processes: int) -> None:
        (tmp_path / "wf").mkdir()
        (tmp_path / "wf" / "take_order.yaml").write_text(WORKFLOW)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env.update(
            PYTHONPATH=str(ROOT),
            ORCHESTRATOR_DATABASE_URL=db_url,
            ORCHESTRATOR_HTTP_PORT="0",
            ORCHESTRATOR_ROLES="api",
            ORCHESTRATOR_LOG_FORMAT="json",
            ORCHESTRATOR_WEBHOOK_SECRET_ORDERS_IN=secret,
        )
        self.log_path = tmp_path / "run.log"
        self._out = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "orchestrator.cli", "run"),
                *("--path", str(tmp_path / "wf"), "--webhook-processes", str(processes)),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (the plain lines of ``click.echo`` are skipped)."""
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def said(self, text: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if text in line["message"]]

    async def port(self) -> int:
        async def served() -> int:
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited early:\n{self.log_path.read_text()}")
            for line in self.log_path.read_text().splitlines():
                if line.startswith("HTTP API and webhooks on http://127.0.0.1:"):
                    return int(line.split(":")[2].split()[0])
            return 0

        return await eventually(served, timeout=60, what="the HTTP port")

    def others(self) -> set[int]:
        """Pids of the other HTTP processes started so far."""
        return {int(line["message"].split()[2]) for line in self.said("serves port")}

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def secret() -> str:
    return generate_secret("standard")


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


@pytest.fixture
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection per request, so the kernel spreads them."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        yield client


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


async def deliver(
    client: aiohttp.ClientSession, port: int, secret: str, delivery: str
) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps({"order": delivery})
    now = int(SYSTEM_CLOCK.now().timestamp())
    headers = {"Content-Type": "application/json", **standard_headers(secret, delivery, now, body)}
    url = f"http://127.0.0.1:{port}/hooks/{HOOK}"
    async with client.post(url, data=body, headers=headers) as answer:
        return answer.status, await answer.json(content_type=None)


@pytest.mark.timeout(180)
async def test_two_processes_record_every_delivery_once_and_leave_nothing_behind(
    db_url: str,
    tmp_path: Path,
    secret: str,
    runs: list[Run],
    fresh_connections: aiohttp.ClientSession,
) -> None:
    run = Run(tmp_path, db_url, secret, processes=2)
    runs.append(run)
    port = await run.port()
    [other] = run.others()
    assert other != run.proc.pid
    # Settings go through a pipe: nothing of them on the command line.
    shown = command_line(other)
    assert shown[1:3] == ["-m", "orchestrator.http_process"]
    assert not any(db_url in arg or secret in arg for arg in shown)

    deliveries = [f"msg_{i}" for i in range(60)]
    answers = await asyncio.gather(
        *(deliver(fresh_connections, port, secret, d) for d in deliveries)
    )
    assert [status for status, _ in answers] == [202] * len(deliveries), answers
    event_ids = [answer["event_id"] for _, answer in answers]
    assert len(set(event_ids)) == len(deliveries)
    # Delivered again: the same events, whichever process takes the retry.
    again = await asyncio.gather(
        *(deliver(fresh_connections, port, secret, d) for d in deliveries[:20])
    )
    assert [answer["event_id"] for _, answer in again] == event_ids[:20]

    # The API is served on the same port by both processes.
    for _ in range(20):
        async with fresh_connections.get(f"http://127.0.0.1:{port}/api/v1/runs?limit=1") as r:
            assert r.status == 200, await r.text()

    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetch(
            "SELECT dedup_key, count(*) AS n FROM events GROUP BY dedup_key ORDER BY dedup_key"
        )
        assert {r["dedup_key"] for r in stored} == {f"webhook:{HOOK}:{d}" for d in deliveries}
        assert {r["n"] for r in stored} == {1}
        assert await conn.fetchval("SELECT count(*) FROM runs") == len(deliveries)
    finally:
        await conn.close()

    def served_by(path: str) -> set[int]:
        return {
            line["pid"]
            for line in run.lines()
            if line["logger"] == "orchestrator.access" and line.get("path", "").startswith(path)
        }

    async def both_logged() -> bool:
        return served_by("/hooks/") == served_by("/api/v1/runs") == {run.proc.pid, other}

    await eventually(both_logged, timeout=10, what="access lines of both processes")
    assert "Traceback" not in run.log_path.read_text()

    assert run.stop(signal.SIGTERM) == 0, run.log_path.read_text()
    assert gone(other)


@pytest.mark.timeout(180)
async def test_the_other_processes_end_when_the_orchestrator_is_killed(
    db_url: str, tmp_path: Path, secret: str, runs: list[Run]
) -> None:
    run = Run(tmp_path, db_url, secret, processes=3)
    runs.append(run)
    await run.port()
    others = run.others()
    assert len(others) == 2

    run.kill()  # SIGKILL: nothing of the orchestrator runs to stop them

    async def all_gone() -> bool:
        return all(gone(pid) for pid in others)

    await eventually(all_gone, timeout=30, what="the other HTTP processes to end")


@pytest.mark.timeout(180)
async def test_a_process_that_dies_is_started_again(
    db_url: str,
    tmp_path: Path,
    secret: str,
    runs: list[Run],
    fresh_connections: aiohttp.ClientSession,
) -> None:
    run = Run(tmp_path, db_url, secret, processes=2)
    runs.append(run)
    port = await run.port()
    [first] = run.others()

    os.kill(first, signal.SIGKILL)

    async def replaced() -> set[int]:
        return run.others() - {first}

    [second] = await eventually(replaced, timeout=60, what="another HTTP process")
    [exited] = run.said(f"HTTP process {first} exited")
    assert exited["level"] == "ERROR"
    statuses = await asyncio.gather(
        *(deliver(fresh_connections, port, secret, f"after_{i}") for i in range(20))
    )
    assert [status for status, _ in statuses] == [202] * 20

    assert run.stop(signal.SIGINT) == 0, run.log_path.read_text()
    assert gone(second)


@pytest.mark.timeout(120)
async def test_workflows_registered_later_are_served_by_every_process(
    db_url: str, fresh_connections: aiohttp.ClientSession
) -> None:
    first = WorkflowSpec(name="first", tasks=(TaskSpec(id="t", handler="noop"),))
    later = WorkflowSpec(
        name="later",
        tasks=(TaskSpec(id="t", handler="noop"),),
        triggers=(WebhookTrigger(hook="late", auth="none"),),
    )
    async with Orchestrator(
        suite_settings(roles="api", worker_slots=0),
        db_url,
        workflows=[first],
        sources=[WebhookSource()],
        http=True,
        webhook_processes=2,
    ) as orch:
        assert orch.http is not None and orch.http_processes is not None
        [other] = orch.http_processes.pids
        await orch.register([later])

        async def post(i: int) -> int:
            url = f"http://127.0.0.1:{orch.http.port}/hooks/late"  # type: ignore[union-attr]
            headers = {"Content-Type": "application/json", "Idempotency-Key": f"late-{i}"}
            async with fresh_connections.post(url, data=b"{}", headers=headers) as answer:
                return answer.status

        # Forty connections: all taken by one process once in 2**39.
        assert await asyncio.gather(*(post(i) for i in range(40))) == [202] * 40
    assert gone(other)


@pytest.mark.timeout(60)
async def test_a_port_another_program_shares_is_refused(db_url: str) -> None:
    # A listener that would let anyone join it: SO_REUSEPORT alone must not
    # let the orchestrator split its connections with another program.
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        orch = Orchestrator(
            suite_settings(roles="api", http_port=port), db_url, http=True, webhook_processes=2
        )
        with pytest.raises(ConfigError, match=f"cannot serve HTTP on 127.0.0.1:{port}"):
            await orch.start()

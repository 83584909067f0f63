"""``orchestrator dev`` stopped by a signal, as a terminal or a supervisor sends it.

Each ``dev`` runs in a process group of its own, as a shell's foreground job
does; Ctrl-C is SIGINT to that whole group. Every process ``dev`` starts
(the embedded PostgreSQL and Kafka broker included) inherits a marker in its
environment, so the tests find them wherever they end up (a session of their
own, re-parented to init) and check that none outlives ``dev``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from eventually import wait_until

from orchestrator.embedded import EmbeddedPostgres
from orchestrator.store import with_database

ROOT = Path(__file__).resolve().parents[2]
MARK = "ORCHESTRATOR_TEST_PROCESS_MARK"

NAP_HANDLER = """
import asyncio

from orchestrator import TaskContext, handler


@handler("nap")
async def nap(ctx: TaskContext, seconds: float) -> None:
    ctx.log.info("napping for %ss", seconds)
    await ctx.clock.sleep(seconds)
"""

WORKFLOWS = {
    "nap.py": NAP_HANDLER,
    "slow.yaml": "name: slow\ntasks:\n  - {id: nap, handler: nap, inputs: {seconds: 600}}\n",
    # A Kafka trigger keeps a consumer fetching from the embedded broker.
    "orders.yaml": (
        "name: orders\ntriggers:\n  - {source: kafka, topic: orders}\n"
        "tasks:\n  - {id: take, handler: noop}\n"
    ),
}


def marked_processes(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Dev:
    """``orchestrator dev`` in a new session, its output kept in a file."""

    def __init__(self, cwd: Path, data_dir: Path, **env: str) -> None:
        self.cwd = cwd
        self.data_dir = data_dir
        self.mark = uuid.uuid4().hex
        self.log = cwd / "dev.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        full.update(
            PYTHONPATH=str(ROOT),
            ORCHESTRATOR_DATA_DIR=str(data_dir),
            ORCHESTRATOR_HTTP_PORT="0",
            ORCHESTRATOR_POLL_INTERVAL_S="0.2",
            ORCHESTRATOR_SHUTDOWN_GRACE_S="1",
            **env,
        )
        full[MARK] = self.mark
        self.env = full
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "dev", str(cwd / "wf")],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=full,
            cwd=cwd,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"dev exited before {text!r}:\n{self.output()}")
            return False

        wait_until(seen, timeout=timeout, what=repr(text))

    def signal_group(self, sig: int) -> None:
        """As a terminal does: the signal goes to every process of the group."""
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout=timeout)

    def kill_everything(self) -> None:
        for pid in [self.proc.pid, *marked_processes(self.mark)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._out.close()

    def assert_stopped_cleanly(self, code: int, *, quiet: bool = True) -> None:
        """Exit status 0, no traceback, no error logged (when ``quiet``), and
        nothing dev started still running or holding its port."""
        out = self.output()
        assert code == 0, out
        assert "Traceback" not in out, out
        if quiet:
            assert " ERROR " not in out, out
        wait_until(
            lambda: not marked_processes(self.mark),
            timeout=10,
            what="no process started by dev left",
        )
        port = re.search(r"starting embedded Kafka broker on 127\.0\.0\.1:(\d+)", out)
        if port:
            assert not answers(int(port.group(1))), "the broker's port is still bound"
        assert not (self.data_dir / "pg" / "postmaster.pid").exists()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "wf").mkdir()
    for name, text in WORKFLOWS.items():
        (tmp_path / "wf" / name).write_text(text)
    return tmp_path


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's base temp directory: as root, the embedded server runs
    as another user who must traverse the path, and every new pytest session
    on the machine makes ``/tmp/pytest-of-root`` private again."""
    path = Path(tempfile.mkdtemp(prefix="orchestrator-dev-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def devs() -> Iterator[list[Dev]]:
    started: list[Dev] = []
    yield started
    for dev in started:
        dev.kill_everything()


def trigger(dev: Dev, workflow: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "trigger", workflow],
        capture_output=True,
        text=True,
        env={k: v for k, v in dev.env.items() if k != MARK},
        cwd=dev.cwd,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


async def task_history(url: str, run_id: int) -> tuple[str, list[tuple[str, str, str]]]:
    conn = await asyncpg.connect(url)
    try:
        state = await conn.fetchval(
            "SELECT state FROM task_instances WHERE run_id = $1 AND task_id = 'nap'", run_id
        )
        moves = await conn.fetch(
            "SELECT from_state, to_state, reason FROM transitions "
            "WHERE run_id = $1 AND task_id = 'nap' ORDER BY id",
            run_id,
        )
    finally:
        await conn.close()
    return state, [(m["from_state"], m["to_state"], m["reason"]) for m in moves]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("database", ["embedded", "configured"])
def test_ctrl_c_stops_dev_cleanly_and_records_the_interrupted_task(
    database: str,
    workdir: Path,
    data_dir: Path,
    devs: list[Dev],
    request: pytest.FixtureRequest,
) -> None:
    env = {}
    if database == "configured":
        env["ORCHESTRATOR_DATABASE_URL"] = request.getfixturevalue("db_url")
    dev = Dev(workdir, data_dir, **env)
    devs.append(dev)
    dev.wait_for("orchestrator dev is running")
    run_id = int(trigger(dev, "slow"))
    dev.wait_for("napping for 600s")

    dev.signal_group(signal.SIGINT)
    code = dev.wait()

    dev.assert_stopped_cleanly(code)
    out = dev.output()
    assert f"run {run_id} task nap attempt 1 interrupted" in out, out
    assert "now up_for_retry" in out, out
    if database == "configured":
        url = env["ORCHESTRATOR_DATABASE_URL"]
        state, moves = asyncio.run(task_history(url, run_id))
    else:
        # Start the database dev kept, and look at what it recorded.
        server = EmbeddedPostgres(data_dir / "pg")
        try:
            url = with_database(server.start(), "orchestrator")
            state, moves = asyncio.run(task_history(url, run_id))
        finally:
            server.stop()
    assert state == "up_for_retry"
    assert moves[-1] == ("running", "up_for_retry", "worker shut down during the attempt")


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("moment", "sig", "to_group"),
    [
        ("starting embedded PostgreSQL", signal.SIGTERM, False),
        ("starting embedded PostgreSQL", signal.SIGINT, True),
        ("starting embedded Kafka broker", signal.SIGTERM, False),
        ("applying migration", signal.SIGINT, True),
        ("orchestrator dev is running", signal.SIGTERM, False),
    ],
)
def test_a_signal_during_start_up_leaves_no_process_behind(
    moment: str, sig: int, to_group: bool, workdir: Path, data_dir: Path, devs: list[Dev]
) -> None:
    dev = Dev(workdir, data_dir)
    devs.append(dev)
    dev.wait_for(moment)
    if to_group:
        dev.signal_group(sig)
    else:
        dev.proc.send_signal(sig)
    code = dev.wait()
    # Not ``quiet``: a Kafka client stopped while it is still connecting may
    # log that it dropped a connection it had not finished opening.
    dev.assert_stopped_cleanly(code, quiet=False)

"""More processes on the HTTP port, so that webhook intake uses more than one core.

One Python process answers a few thousand webhook deliveries a second: most of
its time goes to HTTP parsing, signature checks and JSON, not to the database.
``orchestrator run --webhook-processes N`` (default: one per core) therefore
has N processes listen on the same ``host:port`` with ``SO_REUSEPORT``, and the
kernel spreads new connections over them. The first is the orchestrator
itself (engine, worker, triggerer, sources); the N - 1 others, started here,
run only the HTTP application: webhooks, ``/api/v1``, the UI, ``/healthz``.
Each of those needs only the database, so a request is served the same
whichever process the kernel hands its connection to. Each process has its
own group commit (a 202 still means committed) and its own database pool of
``ORCHESTRATOR_DB_POOL_SIZE`` connections.

What a process needs reaches it over its stdin, pickled: the settings (with the
database URL), the workflows, the log level. Nothing of it is on a command
line or in a log; webhook secrets are in the environment it inherits. Stdin
then stays open as its lifeline: workflows registered later (a reload) follow
on it, and when the orchestrator stops, or dies however it dies, the pipe
closes and the process stops, answering the deliveries it has taken first.
The processes run in sessions of their own, so a terminal's Ctrl-C reaches
only the orchestrator, which stops them before itself; SIGTERM stops one too.

Failures: a process that cannot start fails the orchestrator's start (its log
says why). One that exits later is logged and started again after a backoff,
while the others go on serving the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from orchestrator.backoff import Backoff
from orchestrator.clock import monotonic
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.settings import Settings
from orchestrator.spec import WorkflowSpec

log = logging.getLogger(__name__)

#: The line a process writes on its stdout once it serves the port.
SERVING = b"serving\n"
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class Launch:
    """What one HTTP process is given on its stdin."""

    settings: Settings
    database_url: str
    workflows: tuple[WorkflowSpec, ...]
    log_level: int
    """The orchestrator's: a process logs no more than it does."""


def default_count() -> int:
    """One process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> object | None:
    """The next message on the pipe; None once it is closed."""
    try:
        head = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(head)
        message: object = pickle.loads(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        return None
    return message


class HttpProcesses:
    """``count`` processes serving the HTTP port beside this one, kept running
    until :meth:`stop`."""

    def __init__(
        self,
        count: int,
        launch: Launch,
        *,
        sleep: Callable[[float], Awaitable[None]],
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.count = count
        self._launch = launch
        self._sleep = sleep
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._procs: list[asyncio.subprocess.Process] = []
        self._keepers: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> list[int]:
        """The processes running now."""
        return [p.pid for p in self._procs if p.returncode is None]

    async def start(self) -> None:
        """Start every process and wait until each serves; when one cannot,
        the others are stopped and :class:`ConfigError` says so."""
        starting: list[asyncio.Task[asyncio.subprocess.Process]] = []
        try:
            async with asyncio.TaskGroup() as group:
                starting = [group.create_task(self._spawn()) for _ in range(self.count)]
        except BaseException as failed:  # one failed, or this start is cancelled
            self._procs = [
                task.result()
                for task in starting
                if task.done() and not task.cancelled() and task.exception() is None
            ]
            await self.stop()
            if isinstance(failed, BaseExceptionGroup):
                raise failed.exceptions[0] from None
            raise
        self._procs = [task.result() for task in starting]
        self._keepers = [
            asyncio.create_task(self._keep(slot), name=f"http-process-{slot}")
            for slot in range(self.count)
        ]

    async def follow(self, workflows: Iterable[WorkflowSpec]) -> None:
        """Route by ``workflows`` from now on, in every process (and in those started later)."""
        self._launch = replace(self._launch, workflows=tuple(workflows))
        message = frame(self._launch.workflows)
        for proc in self._procs:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.write(message)
                with contextlib.suppress(ConnectionError):  # it exited: its keeper restarts it
                    await proc.stdin.drain()

    async def stop(self) -> None:
        """Close every process's lifeline and wait for it to finish what it
        took; kill the ones still running after ``stop_timeout_s``."""
        keepers, self._keepers = self._keepers, []
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        running = [p for p in self._procs if p.returncode is None]
        for proc in running:
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning(
                        "HTTP process %d did not stop within %ss; killing it",
                        proc.pid,
                        self.stop_timeout_s,
                    )
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in running))

    async def _spawn(self) -> asyncio.subprocess.Process:
        launch = self._launch
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator.http_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            await self._until_serving(proc, launch)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        assert proc.stdin is not None
        if launch is not self._launch:  # workflows registered while it started
            proc.stdin.write(frame(self._launch.workflows))
        log.info("HTTP process %d serves port %d", proc.pid, launch.settings.http_port)
        return proc

    async def _until_serving(self, proc: asyncio.subprocess.Process, launch: Launch) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(frame(launch))
        said = b""
        try:
            await proc.stdin.drain()
            async with asyncio.timeout(self.start_timeout_s):
                said = await proc.stdout.readline()
        except ConnectionError:
            pass  # it exited at once
        except TimeoutError:
            raise ConfigError(
                f"an HTTP process did not serve within {self.start_timeout_s}s of starting"
            ) from None
        if said != SERVING:
            code = await proc.wait()
            raise ConfigError(
                f"an HTTP process exited while starting (exit code {code}); its log says why"
            )

    async def _keep(self, slot: int) -> None:
        """Start the slot's process again whenever it exits, after a backoff
        (reset once a process has served longer than the longest backoff)."""
        backoff = Backoff(1.0, 30.0)
        started = monotonic()
        while True:
            proc = self._procs[slot]
            code = await proc.wait()
            if monotonic() - started > backoff.max_s:
                backoff.reset()
            while True:
                delay = backoff.next()
                log.error(
                    "HTTP process %d exited with code %s; starting another in %.1fs",
                    proc.pid,
                    code,
                    delay,
                )
                await self._sleep(delay)
                try:
                    self._procs[slot] = await self._spawn()
                except OrchestratorError as exc:
                    log.error("%s", exc)
                    continue
                started = monotonic()
                break

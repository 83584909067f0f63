"""The ``shell`` handler: run a command in its own process group.

The command starts a new session (``start_new_session=True``), so it leads a
process group holding everything it spawns. When the attempt ends — the
command exits, times out, or the task is cancelled — whatever is left of that
group gets SIGTERM, then SIGKILL after a grace period: a task never leaves
processes behind on the worker, and a backgrounded child cannot keep the
output pipes (and so the task) open after the command itself has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from orchestrator.clock import real_pause
from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError
from orchestrator.handler_inputs import ByteCount, PositiveSeconds
from orchestrator.registry import handler
from orchestrator.task_logs import current as current_task_log

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "KILL_GRACE_S", "shell"]

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
KILL_GRACE_S = 2.0
"""Seconds between SIGTERM and SIGKILL."""
_POLL_S = 0.02
_EXIT_POLL_S = 0.1
_DRAIN_S = 1.0
"""How long to wait for the pipes to close once the process group is gone; a
process that escaped the group (``setsid``) may hold them open for ever."""
_READ_CHUNK = 64 * 1024
_MESSAGE_TAIL_CHARS = 1000

# Cleanups run as tasks of their own so that a second cancellation cannot stop
# them half-way; the set keeps them referenced until they finish.
_cleanups: set[asyncio.Task[Any]] = set()


class _Tail:
    """Keeps the last ``limit`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        start = 0
        if self.dropped:
            # The cut may have split a UTF-8 sequence: skip its continuation bytes.
            while start < min(3, len(self.data)) and self.data[start] & 0xC0 == 0x80:
                start += 1
        return self.data[start:].decode("utf-8", errors="replace")


@handler()
async def shell(
    ctx: TaskContext,
    *,
    command: str | list[str | int | float],
    timeout_s: PositiveSeconds = 60,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    max_output_bytes: ByteCount = DEFAULT_MAX_OUTPUT_BYTES,
) -> dict[str, Any]:
    """Run ``command`` and return ``{"exit_code": 0, "stdout": str, "stderr": str}``.

    A string runs through ``/bin/sh -c``; a list is executed directly, without
    a shell. ``env`` is merged over the worker's environment; stdin is empty.
    Only the last ``max_output_bytes`` of each stream are kept (decoded as
    UTF-8). A non-zero exit, a kill by signal or running past ``timeout_s``
    fails the attempt (retryable) with the tail of stderr in the message.
    """
    argv = _argv(command)
    timeout = _positive_number("timeout_s", timeout_s)
    if (
        isinstance(max_output_bytes, bool)
        or not isinstance(max_output_bytes, int)
        or max_output_bytes < 0
    ):
        raise _bad_input(f"max_output_bytes must be an integer >= 0, got {max_output_bytes!r}")
    if cwd is not None and not isinstance(cwd, str):
        raise _bad_input(f"cwd must be a string, got {type(cwd).__name__}")
    full_env = _environment(env)

    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
    except OSError as exc:
        # The program or cwd is missing or not executable: a retry won't help.
        culprit = f" ({exc.filename!r})" if exc.filename not in (None, argv[0]) else ""
        raise _bad_input(f"cannot start {argv[0]!r}: {exc.strerror}{culprit}") from None
    except ValueError as exc:  # e.g. a NUL byte in an argument
        raise _bad_input(f"cannot start {argv[0]!r}: {exc}") from None
    ctx.log.debug("shell: started pid %d", proc.pid)

    stdout, stderr = _Tail(max_output_bytes), _Tail(max_output_bytes)
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    pumps = [
        asyncio.create_task(_pump(proc.stdout, stdout, "stdout")),
        asyncio.create_task(_pump(proc.stderr, stderr, "stderr")),
    ]
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout):
                await _wait_for_exit(proc)
        except TimeoutError:
            timed_out = True
    finally:
        # Also on cancellation: the group must not outlive the attempt.
        leftovers = await _run_to_end(_finish(proc, pumps))
    if leftovers and not timed_out:
        ctx.log.warning("shell: the command exited but left processes running; they were killed")
    for pump in pumps:
        if not pump.cancelled() and (error := pump.exception()) is not None:
            raise TaskError(f"shell: reading the command's output failed: {error!r}")

    if timed_out:
        raise TaskError(
            f"shell: command timed out after {timeout:g} s; its process group was killed"
            + _detail(stdout, stderr, prefix="; ")
        )
    code = proc.returncode
    if code is None:  # only if even SIGKILL did not end it (uninterruptible sleep)
        raise TaskError(f"shell: command (pid {proc.pid}) did not exit after SIGKILL")
    if code < 0:
        raise TaskError(
            f"shell: command was killed by {_signal_name(-code)}" + _detail(stdout, stderr)
        )
    if code != 0:
        raise TaskError(f"shell: command exited with code {code}" + _detail(stdout, stderr))
    return {"exit_code": 0, "stdout": stdout.text(), "stderr": stderr.text()}


# --- inputs ------------------------------------------------------------------


def _bad_input(message: str) -> NonRetryableError:
    return NonRetryableError(f"shell: {message}")


def _argv(command: object) -> list[str]:
    if isinstance(command, str):
        if not command.strip():
            raise _bad_input("command is empty")
        return ["/bin/sh", "-c", command]
    if isinstance(command, Sequence) and command:
        argv: list[str] = []
        for arg in command:
            # YAML turns `[sleep, 1]` into ["sleep", 1]: numbers are taken as text.
            if isinstance(arg, str):
                argv.append(arg)
            elif isinstance(arg, int | float) and not isinstance(arg, bool):
                argv.append(str(arg))
            else:
                raise _bad_input(f"command list items must be strings, got {arg!r}")
        return argv
    raise _bad_input(f"command must be a string or a non-empty list, got {command!r}")


def _environment(env: object) -> dict[str, str]:
    if env is None:
        return dict(os.environ)
    if not isinstance(env, dict):
        raise _bad_input(f"env must be a mapping, got {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _bad_input(
                f"env[{key!r}] must be a string (quote numbers and booleans in YAML), "
                f"got {type(value).__name__}"
            )
    return {**os.environ, **env}


def _positive_number(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _bad_input(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --- output ------------------------------------------------------------------


async def _pump(stream: asyncio.StreamReader, tail: _Tail, name: str) -> None:
    task_log = current_task_log()  # the attempt's log keeps the output too, as it comes
    while chunk := await stream.read(_READ_CHUNK):
        tail.add(chunk)
        if task_log is not None:
            task_log.write_bytes(name, chunk)


def _detail(stdout: _Tail, stderr: _Tail, *, prefix: str = ": ") -> str:
    err = stderr.text().strip()[-_MESSAGE_TAIL_CHARS:]
    if err:
        return f"{prefix}stderr: {err}"
    out = stdout.text().strip()[-_MESSAGE_TAIL_CHARS:]
    return f"{prefix}stdout: {out}" if out else f"{prefix}no output"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# --- process group -------------------------------------------------------------


async def _run_to_end(coro: Coroutine[Any, Any, Any]) -> Any:
    """Await ``coro`` in its own task, which finishes even if we are cancelled."""
    task = asyncio.ensure_future(coro)
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    return await asyncio.shield(task)


async def _wait_for_exit(proc: asyncio.subprocess.Process) -> None:
    """Return once the command itself has exited.

    ``proc.wait()`` also waits for the output pipes to close (up to Python
    3.11), which a backgrounded child may never do; so the exit status, set as
    soon as the command is reaped, is polled too.
    """
    exited = asyncio.ensure_future(proc.wait())
    try:
        while proc.returncode is None:
            await asyncio.wait([exited], timeout=_EXIT_POLL_S)
    finally:
        exited.cancel()


async def _finish(proc: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> bool:
    """Kill what is left of the command's process group, reap the command and
    collect its output. Returns whether any process was left to kill."""
    pgid = proc.pid  # a session leader's pid is its group's id
    leftovers = _group_alive(pgid)
    if leftovers:
        _signal_group(pgid, signal.SIGTERM)
        _signal_group(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        if not await _until(lambda: not _group_alive(pgid), KILL_GRACE_S):
            _signal_group(pgid, signal.SIGKILL)
            await _until(lambda: not _group_alive(pgid), KILL_GRACE_S)
    # The exit status arrives from the child watcher shortly after the death.
    await _until(lambda: proc.returncode is not None, KILL_GRACE_S)

    # With the group gone the pipes reach EOF, unless a process that left the
    # group (setsid) still holds them: then stop reading and close them.
    _, reading = await asyncio.wait(pumps, timeout=_DRAIN_S)
    if reading:
        for pump in reading:
            pump.cancel()
        await asyncio.wait(reading)
        transport = getattr(proc, "_transport", None)  # asyncio offers no public close
        if transport is not None:
            transport.close()
    return leftovers


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Gone already, or (PermissionError) only members we may not signal are left,
    # such as a setuid program: nothing more can be done about them.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _until(condition: Callable[[], bool], within: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() >= deadline:
            return False
        await real_pause(_POLL_S)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # members exist that we may not signal; look at them below
    # killpg also reaches zombies. Killed grandchildren are re-parented to PID 1,
    # which in a container is often not an init that reaps them: without a
    # closer look each kill would wait out the whole grace period.
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return True  # no procfs: assume alive, which only costs time
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue  # exited meanwhile
        # After "pid (comm) ": state, ppid, pgrp, ... (comm may hold spaces and parens).
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            return True
    return False

"""The ``shell`` handler runs real processes; process-group cleanup is checked
with ``os.kill(pid, 0)`` under a deadline, never after a fixed sleep."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from handlers import shell as shell_module
from orchestrator.clock import real_pause
from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError

shell = shell_module.shell

# Starts a background child and records both pids, then waits for ever.
TREE_SCRIPT = "sleep 30 & echo $! > bg.pid; echo $$ > sh.pid; wait"


def make_ctx() -> TaskContext:
    return TaskContext(run_id=1, task_id="t", attempt=1, workflow="w", params={}, upstream={})


async def eventually(check: Callable[[], bool], *, within: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{check!r} still false after {within} s")
        await real_pause(0.01)


def process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A killed orphan is re-parented to PID 1 and stays a zombie until PID 1
    # reaps it; in a container PID 1 often never does. A zombie is dead.
    return process_state(pid) in (None, "Z")


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


async def test_success_returns_output() -> None:
    result = await shell(make_ctx(), command="echo out; echo err >&2")
    assert result == {"exit_code": 0, "stdout": "out\n", "stderr": "err\n"}


async def test_list_form_runs_without_a_shell() -> None:
    numbers_as_yaml_gives_them: list[object] = ["printf", "%s|", "a b", "$HOME", "*", 3]
    result = await shell(make_ctx(), command=numbers_as_yaml_gives_them)  # type: ignore[arg-type]
    assert result["stdout"] == "a b|$HOME|*|3|"


async def test_stdin_is_empty() -> None:
    result = await shell(make_ctx(), command="cat; echo done", timeout_s=5)
    assert result["stdout"] == "done\n"


async def test_non_zero_exit_names_code_and_stderr_tail() -> None:
    with pytest.raises(TaskError) as info:
        await shell(make_ctx(), command="echo progress; echo first >&2; echo oops >&2; exit 3")
    message = str(info.value)
    assert "exited with code 3" in message
    assert message.endswith("stderr: first\noops")
    assert info.value.non_retryable is False


async def test_non_zero_exit_without_stderr_quotes_stdout() -> None:
    with pytest.raises(TaskError, match="exited with code 1: stdout: nope"):
        await shell(make_ctx(), command="echo nope; exit 1")


async def test_death_by_signal_is_named() -> None:
    with pytest.raises(TaskError, match="killed by SIGKILL"):
        await shell(make_ctx(), command="kill -9 $$")


async def test_env_is_merged_and_cwd_is_used(tmp_path: Path) -> None:
    result = await shell(
        make_ctx(),
        command='echo "$GREETING"; pwd -P; test -n "$PATH" && echo has-path',
        env={"GREETING": "hi there"},
        cwd=str(tmp_path),
    )
    assert result["stdout"].splitlines() == ["hi there", str(tmp_path), "has-path"]


async def test_output_keeps_the_tail() -> None:
    result = await shell(
        make_ctx(),
        command="seq 1 20000; printf abcdef >&2",
        max_output_bytes=12,
    )
    assert result["stdout"] == "19999\n20000\n"
    assert result["stderr"] == "abcdef"

    small = await shell(make_ctx(), command="printf abcdef >&2", max_output_bytes=3)
    assert small["stderr"] == "def"


async def test_truncation_does_not_split_utf8() -> None:
    # "é" is two bytes; keeping 3 bytes of "éé" would start mid-character.
    result = await shell(make_ctx(), command=["printf", "éé"], max_output_bytes=3)
    assert result["stdout"] == "é"


async def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as info:
        await shell(make_ctx(), command=TREE_SCRIPT, cwd=str(tmp_path), timeout_s=1)
    assert "timed out after 1 s" in str(info.value)
    assert info.value.non_retryable is False
    sh_pid, bg_pid = read_pid(tmp_path / "sh.pid"), read_pid(tmp_path / "bg.pid")
    assert sh_pid is not None and bg_pid is not None
    await eventually(lambda: is_gone(sh_pid) and is_gone(bg_pid))
    with pytest.raises(ProcessLookupError):
        os.kill(sh_pid, 0)  # our own child is reaped, not just dead


async def test_cancellation_kills_the_whole_process_tree(tmp_path: Path) -> None:
    task = asyncio.create_task(shell(make_ctx(), command=TREE_SCRIPT, cwd=str(tmp_path)))
    await eventually(lambda: read_pid(tmp_path / "sh.pid") is not None)
    sh_pid, bg_pid = read_pid(tmp_path / "sh.pid"), read_pid(tmp_path / "bg.pid")
    assert sh_pid is not None and bg_pid is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: is_gone(sh_pid) and is_gone(bg_pid))


async def test_sigterm_ignored_escalates_to_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shell_module, "KILL_GRACE_S", 0.2)
    command = "trap '' TERM; " + TREE_SCRIPT  # the ignored TERM is inherited by sleep
    with pytest.raises(TaskError, match="timed out"):
        await shell(make_ctx(), command=command, cwd=str(tmp_path), timeout_s=0.5)
    sh_pid, bg_pid = read_pid(tmp_path / "sh.pid"), read_pid(tmp_path / "bg.pid")
    assert sh_pid is not None and bg_pid is not None
    await eventually(lambda: is_gone(sh_pid) and is_gone(bg_pid))


async def test_background_child_left_after_exit_is_killed(tmp_path: Path) -> None:
    # Without the cleanup, `sleep` would hold stdout open and the task would
    # wait for it until the timeout.
    result = await shell(
        make_ctx(),
        command="sleep 30 & echo $! > bg.pid; echo started",
        cwd=str(tmp_path),
        timeout_s=20,
    )
    assert result["stdout"] == "started\n"
    bg_pid = read_pid(tmp_path / "bg.pid")
    assert bg_pid is not None
    await eventually(lambda: is_gone(bg_pid))


def test_group_of_zombies_counts_as_gone() -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    try:
        # Wait for the exit without reaping: the child stays a zombie, which
        # killpg still reaches but which is no longer running.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert process_state(proc.pid) == "Z"
        os.killpg(proc.pid, 0)
        assert not shell_module._group_alive(proc.pid)
    finally:
        proc.wait(timeout=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    assert not shell_module._group_alive(proc.pid)


async def test_missing_program_and_cwd_are_non_retryable(tmp_path: Path) -> None:
    with pytest.raises(NonRetryableError, match="cannot start 'no-such-program-xyz'"):
        await shell(make_ctx(), command=["no-such-program-xyz"])
    with pytest.raises(NonRetryableError, match="cannot start"):
        await shell(make_ctx(), command="true", cwd=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("inputs", "complaint"),
    [
        ({"command": ""}, "empty"),
        ({"command": []}, "non-empty list"),
        ({"command": ["echo", None]}, "strings"),
        ({"command": "true", "timeout_s": -1}, "timeout_s"),
        ({"command": "true", "env": {"N": 3}}, "env"),
        ({"command": "true", "max_output_bytes": 1.5}, "max_output_bytes"),
    ],
)
async def test_bad_inputs_are_non_retryable(inputs: dict[str, object], complaint: str) -> None:
    with pytest.raises(NonRetryableError, match=complaint):
        await shell(make_ctx(), **inputs)  # type: ignore[arg-type]

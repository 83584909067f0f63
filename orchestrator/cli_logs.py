"""``orchestrator logs RUN TASK``: an attempt's captured log."""

from __future__ import annotations

import json

import click

from orchestrator import task_logs
from orchestrator.cli_support import cli_settings, fail, open_database, run_async
from orchestrator.clock import real_pause

_FOLLOW_POLL_S = 0.5


def _emit(line: task_logs.LogLine, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "chunk": line.chunk,
                    "stream": line.stream,
                    "at": line.at.isoformat(),
                    "text": line.text,
                }
            )
        )
    else:
        click.echo(line.text, err=line.stream == task_logs.STDERR)


@click.command("logs")
@click.argument("run_id", type=int)
@click.argument("task_id")
@click.option("--attempt", type=click.IntRange(1), default=None, help="Default: the latest.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the attempt ends.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object a line: {"chunk", "stream", "at", "text"}.',
)
def logs_cmd(run_id: int, task_id: str, attempt: int | None, follow: bool, as_json: bool) -> None:
    """Print what attempt N of TASK in RUN logged: its ctx.log records (stream
    "log"), stdout and stderr (stderr lines go to stderr), and "meta" lines such
    as the mark where a log was cut at its size limit.

    Exit codes: 0 ok, 2 no such run or task."""
    settings = cli_settings()

    async def go() -> None:
        db = await open_database(settings)
        try:
            found = await task_logs.task_attempt(db, run_id, task_id)
            if found is None:
                fail(f"run {run_id} has no task {task_id!r} (or there is no run {run_id})")
            current, state = found
            number = attempt if attempt is not None else current
            if number == 0:
                if not follow:
                    return
                number = 1
            after = 0
            while True:
                # Whether it ran is read before the lines: the last lines are
                # stored before the attempt's end is, so none can be missed.
                current, state = await task_logs.task_attempt(db, run_id, task_id) or (0, "")
                running = task_logs.attempt_running(current, state, number)
                lines = await task_logs.read_lines(db, run_id, task_id, number, after=after)
                for line in lines:
                    _emit(line, as_json)
                if lines:
                    after = lines[-1].chunk
                if not follow or (not running and len(lines) < 1):
                    return
                if not lines:
                    await real_pause(_FOLLOW_POLL_S)
        finally:
            await db.close()

    run_async(go)

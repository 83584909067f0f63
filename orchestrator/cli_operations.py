"""``orchestrator clear``, ``cancel`` and ``mark``: operator actions on a run,
recorded with the OS user as actor (see :mod:`orchestrator.operations`)."""

from __future__ import annotations

import json
from typing import Any

import click

from orchestrator.cli_support import cli_actor, with_engine
from orchestrator.states import RunState


@click.command()
@click.argument("run_id", type=int)
@click.option("--task", "-t", "tasks", multiple=True, help="Clear this task (repeatable).")
@click.option("--downstream", is_flag=True, help="Also clear everything downstream of --task.")
@click.option(
    "--failed-only", is_flag=True, help="Only failed, upstream_failed and dead_lettered tasks."
)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def clear(
    run_id: int, tasks: tuple[str, ...], downstream: bool, failed_only: bool, reason: str
) -> None:
    """Run failed (or the named) tasks of RUN_ID again, in the same run."""
    from orchestrator.operations import clear_run

    if downstream and not tasks:
        raise click.UsageError("--downstream needs at least one --task")
    result = with_engine(
        lambda engine: clear_run(
            engine,
            run_id,
            tasks=list(tasks) or None,
            downstream=downstream,
            failed_only=failed_only,
            actor=cli_actor(),
            reason=reason,
        )
    )
    reopened = ""
    if result.reopened:
        reopened = (
            " (run re-opened; queued until max_active_runs leaves room)"
            if result.run_state == RunState.QUEUED
            else " (run re-opened)"
        )
    click.echo(f"cleared {', '.join(result.cleared)} in run {run_id}{reopened}")


@click.command()
@click.argument("run_id", type=int)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def cancel(run_id: int, reason: str) -> None:
    """Cancel RUN_ID: pending tasks skipped, waits ended, running attempts stopped."""
    from orchestrator.operations import cancel_run

    result = with_engine(
        lambda engine: cancel_run(engine, run_id, actor=cli_actor(), reason=reason)
    )
    skipped = ", ".join(result.skipped) or "none"
    click.echo(f"cancelled run {run_id}; skipped tasks: {skipped}")


@click.command()
@click.argument("run_id", type=int)
@click.argument("task_id")
@click.argument("state", type=click.Choice(["success", "failed", "skipped"]))
@click.option("--output", "output_json", default=None, help="The task's output (JSON; success).")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def mark(run_id: int, task_id: str, state: str, output_json: str | None, reason: str) -> None:
    """Set TASK_ID of RUN_ID to STATE by hand; downstream is decided again."""
    from orchestrator.operations import mark_task

    output: Any = None
    if output_json is not None:
        try:
            output = json.loads(output_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--output") from None
    result = with_engine(
        lambda engine: mark_task(
            engine, run_id, task_id, state, output=output, actor=cli_actor(), reason=reason
        )
    )
    again = f"; decided again: {', '.join(result.redecided)}" if result.redecided else ""
    click.echo(f"marked {task_id} {state} in run {run_id}{again} (run {result.run_state.value})")


COMMANDS = (clear, cancel, mark)

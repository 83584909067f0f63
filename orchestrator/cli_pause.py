"""``orchestrator pause``, ``unpause`` and ``held``: pausing a workflow (or,
with ``--task``, one of its tasks) from the command line, and the events a
paused workflow held."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.cli_support import cli_actor, cli_settings, open_database, run_async

if TYPE_CHECKING:
    from orchestrator.engine import Engine

HELD_STATES = ("buffered", "started", "coalesced", "dropped")


@click.command()
@click.argument("workflow")
@click.option("--task", "-t", default=None, help="Hold only this task, in every run of WORKFLOW.")
@click.option(
    "--hold-running",
    is_flag=True,
    help="Hold the tasks of runs in flight too (by default they go on).",
)
@click.option("--reason", "-r", default="", help="Why, for the audit log.")
def pause(workflow: str, task: str | None, hold_running: bool, reason: str) -> None:
    """Pause WORKFLOW: it starts no new run from any source until unpaused.
    Events that arrive meanwhile follow its on_pause policy (buffer, coalesce
    or drop). Pausing a paused workflow changes nothing."""
    from orchestrator.engine import Engine
    from orchestrator.pausing import pause_workflow

    if task is not None and hold_running:
        raise click.UsageError("--hold-running pauses a whole workflow; leave out --task")
    settings = cli_settings()
    actor = cli_actor()

    async def go() -> str:
        db = await open_database(settings)
        try:
            engine = Engine(db, lease_s=settings.lease_s)
            if task is not None:  # pragma: no cover - task holds are built with operations
                return await _task_hold(engine, workflow, task, actor, reason, hold=True)
            if await pause_workflow(
                engine, workflow, actor=actor, reason=reason, hold_running=hold_running
            ):
                return f"paused {workflow}"
            return f"{workflow} is paused already (nothing changed)"
        finally:
            await db.close()

    click.echo(run_async(go))


@click.command()
@click.argument("workflow")
@click.option("--task", "-t", default=None, help="Release only this task's held instances.")
@click.option("--reason", "-r", default="", help="Why, for the audit log.")
def unpause(workflow: str, task: str | None, reason: str) -> None:
    """Unpause WORKFLOW: the runs of the events it held start now, in arrival
    order (one per trigger under on_pause: coalesce); schedules catch up per
    their catchup policy."""
    from orchestrator.engine import Engine
    from orchestrator.pausing import unpause_workflow

    settings = cli_settings()
    actor = cli_actor()

    async def go() -> str:
        db = await open_database(settings)
        try:
            engine = Engine(db, lease_s=settings.lease_s)
            if task is not None:  # pragma: no cover - task holds are built with operations
                return await _task_hold(engine, workflow, task, actor, reason, hold=False)
            done = await unpause_workflow(engine, workflow, actor=actor, reason=reason)
        finally:
            await db.close()
        if not done.changed:
            return f"{workflow} is not paused (nothing changed)"
        folded = f" ({done.coalesced} coalesced)" if done.coalesced else ""
        return f"unpaused {workflow}: {len(done.run_ids)} held run(s) started{folded}"

    click.echo(run_async(go))


async def _task_hold(
    engine: Engine, workflow: str, task: str, actor: str, reason: str, *, hold: bool
) -> str:
    from orchestrator import operations

    if hold:
        await operations.pause_task(engine, workflow, task, actor=actor, reason=reason)
        return f"paused task {task} of {workflow}"
    await operations.unpause_task(engine, workflow, task, actor=actor, reason=reason)
    return f"unpaused task {task} of {workflow}"


@click.command()
@click.argument("workflow")
@click.option("--state", "-s", type=click.Choice(HELD_STATES), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=50, show_default=True)
def held(workflow: str, state: str | None, limit: int) -> None:
    """The events WORKFLOW held while paused, newest first: buffered (start at
    unpause), started or coalesced (with their run), dropped (with the reason)."""
    from orchestrator.views import render_table
    from orchestrator.workflow_list import held_events, workflow_summary

    settings = cli_settings()

    async def go() -> str:
        db = await open_database(settings)
        try:
            await workflow_summary(db, workflow)  # unknown: exits 2 naming it
            found = await held_events(db, workflow, state=state, limit=limit)
        finally:
            await db.close()
        if not found:
            return f"{workflow} holds no events"
        return render_table(
            ("HELD", "EVENT", "SOURCE", "CHANNEL", "STATE", "RUN", "HELD AT", "REASON"),
            [
                (
                    h["id"],
                    h["event_id"],
                    h["source"],
                    h["channel"],
                    h["state"],
                    h["run_id"] or "-",
                    h["held_at"].strftime("%Y-%m-%d %H:%M:%S"),
                    h["reason"],
                )
                for h in found
            ],
        )

    click.echo(run_async(go))

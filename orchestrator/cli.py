"""The ``orchestrator`` command."""

from __future__ import annotations

import json
import sys
from collections.abc import Container
from pathlib import Path
from typing import Any

import click

from orchestrator.audit import ACTIONS
from orchestrator.cli_support import cli_actor, cli_settings, fail, open_database, run_async
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError
from orchestrator.states import RunState
from orchestrator.store import connect

# The short names this module uses throughout.
_settings = cli_settings
_fail = fail
_run = run_async
_database = open_database


def parse_params(
    pairs: tuple[str, ...], params_json: str | None, *, text: Container[str] = ()
) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON keeps its type (7, true, [1]),
    except for the params in ``text`` (declared ``type: string``): theirs stays text."""
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--params") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params")
        params.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        if key in text:
            params[key] = raw
            continue
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


class _WithSourceCommands(click.Group):
    """The core's commands and those the installed event sources add
    (``backfill``, ``publish``, ``hook-send``: see :mod:`orchestrator.plugins`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_source_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or _source_commands().get(cmd_name)


def _source_commands() -> dict[str, click.Command]:
    from orchestrator.plugins import source_registry

    return source_registry().commands()


@click.group(cls=_WithSourceCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orchestrator")
def main() -> None:
    """Event-driven workflow orchestrator on PostgreSQL."""


@main.command()
@click.argument("path", type=click.Path(path_type=Path), default=None, required=False)
def dev(path: Path | None) -> None:
    """Everything in one process with zero setup: an embedded PostgreSQL under
    ./.orchestrator/ (unless ORCHESTRATOR_DATABASE_URL is set), a worker, and the
    workflows under PATH (default: examples/), reloaded when files change."""
    from orchestrator.devmode import run_dev

    settings = _settings()
    try:
        run_dev(settings, path or settings.workflows_path)
    except OrchestratorError as exc:
        _fail(str(exc))


@main.command("run")
@click.option(
    "--path",
    type=click.Path(path_type=Path),
    default=None,
    help="Workflows and handlers to load (default: ORCHESTRATOR_WORKFLOWS_PATH).",
)
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations at start.")
def run_cmd(path: Path | None, no_migrate: bool) -> None:
    """Production mode: settings from ORCHESTRATOR_* variables; runs until SIGTERM."""
    from orchestrator.devmode import _run_loop, resolve_database_url, serve

    settings = _settings()
    if settings.database_url is None:
        _fail("ORCHESTRATOR_DATABASE_URL is not set (use `orchestrator dev` for a local setup)")
    url = resolve_database_url(settings)

    async def go() -> None:
        if no_migrate:
            from orchestrator.store import pending

            db = await connect(url, size=2, min_size=1)
            try:
                async with db.pool.acquire() as conn:
                    todo = await pending(conn)
            finally:
                await db.close()
            if todo:
                raise OrchestratorError(
                    f"pending migrations: {', '.join(todo)}; run `orchestrator migrate` first"
                )
        await serve(settings, url, path or settings.workflows_path, reload=False)

    try:
        _run_loop(go())
    except OrchestratorError as exc:
        _fail(str(exc))


@main.command()
def migrate() -> None:
    """Apply pending schema migrations (safe to run from several processes at once)."""
    settings = _settings()

    async def go() -> list[str]:
        db = await _database(settings)
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = _run(go)
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Load every workflow under PATH and report every error; exit 1 if any."""
    from orchestrator.devmode import load_workflows
    from orchestrator.loader import format_errors

    try:
        result = load_workflows(path)
    except OrchestratorError as exc:
        _fail(str(exc))
        return
    for name, spec in sorted(result.workflows.items()):
        click.echo(
            f"ok  {name} ({len(spec.tasks)} tasks, version {spec.version}) "
            f"in {result.workflow_files.get(name, '?')}"
        )
    if result.errors:
        click.secho(format_errors(result.errors), fg="red", err=True)
        click.secho(
            f"{len(result.errors)} error(s); nothing is loaded from files with errors",
            fg="red",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.argument("workflow")
@click.option(
    "--param",
    "-p",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A run param; repeatable. VALUE is JSON when it parses as JSON, "
    "except for params declared as strings.",
)
@click.option("--params", "params_json", metavar="JSON", help="Params as one JSON object.")
@click.option(
    "--idempotency-key",
    default=None,
    help="Triggering again with the same key starts nothing and prints the same run.",
)
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 0 on success, 1 if not.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after N seconds.")
def trigger(
    workflow: str,
    pairs: tuple[str, ...],
    params_json: str | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start a run of WORKFLOW and print its id (recorded as a manual event).

    Params the workflow does not declare, or of the wrong type, are refused
    (exit 2). With --wait, a run that fails has its failed tasks printed."""
    from orchestrator.api import manual_event
    from orchestrator.engine import Engine
    from orchestrator.intake import Intake
    from orchestrator.run_waiter import RunWaiter
    from orchestrator.views import failure_report

    settings = _settings()
    params = parse_params(pairs, params_json)
    actor = cli_actor()

    async def go() -> tuple[RunState, str] | None:
        db = await _database(settings)
        try:
            intake = Intake(Engine(db, lease_s=settings.lease_s))
            async with db.pool.acquire() as conn:
                schema = (await intake.registered_schemas(conn, [workflow])).get(workflow)
            typed = (
                parse_params(pairs, params_json, text=schema.string_params) if schema else params
            )
            event = manual_event(workflow, typed, actor=actor, idempotency_key=idempotency_key)

            async def start() -> int:
                [accepted] = await intake.ingest([event], actor=actor)
                if accepted.paused:
                    raise OrchestratorError(
                        f"workflow {workflow!r} is paused: the trigger is recorded as event "
                        f"{accepted.event_id} and follows its on_pause policy at unpause"
                    )
                return accepted.run_ids[0]

            if not wait:
                click.echo(await start())
                return None
            async with RunWaiter(db) as waiter:
                run_id = await start()
                click.echo(run_id)
                try:
                    states = await waiter.wait([run_id], timeout=timeout)
                except TimeoutError:
                    raise OrchestratorError(
                        f"run {run_id} has not ended after {timeout}s (it goes on)"
                    ) from None
            final = states[run_id]
            return final, "" if final == RunState.SUCCESS else await failure_report(db, run_id)
        finally:
            await db.close()

    ended = _run(go)
    if ended is not None:
        final, report = ended
        click.echo(final.value)
        if report:
            click.secho(report, fg="red", err=True)
        sys.exit(0 if final == RunState.SUCCESS else 1)


@main.command()
@click.argument("name", required=False)
@click.option("--owner", default=None, help="Only the workflows of this owner.")
@click.option("--tag", default=None, help="Only the workflows with this tag.")
def workflows(name: str | None, owner: str | None, tag: str | None) -> None:
    """List the registered workflows (what new runs start with: paused or
    not, owner, tags, triggers, next schedule time, newest run, events held
    while paused), or show NAME: its triggers and the params it accepts."""
    from orchestrator.views import describe_workflow, workflows_table

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            if name is not None:
                return await describe_workflow(db, name)
            return await workflows_table(db, owner=owner, tag=tag)
        finally:
            await db.close()

    click.echo(_run(go))


@main.command()
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Age in days (default: ORCHESTRATOR_RETENTION_DAYS).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def prune(days: float | None, dry_run: bool) -> None:
    """Delete ended runs, events and dead letters older than the retention period
    (in batches; never anything a live run still needs)."""
    from datetime import timedelta

    from orchestrator.retention import count_prunable
    from orchestrator.retention import prune as prune_history

    settings = _settings()
    cutoff = SYSTEM_CLOCK.now() - timedelta(days=days or settings.retention_days)

    async def go() -> str:
        db = await _database(settings)
        try:
            if dry_run:
                counts = await count_prunable(db, cutoff)
                return f"would prune {counts} (older than {cutoff:%Y-%m-%d %H:%M} UTC)"
            return f"pruned {await prune_history(db, cutoff, batch=settings.prune_batch)}"
        finally:
            await db.close()

    click.echo(_run(go))


@main.command()
@click.option("--workflow", "-w", default=None)
@click.option("--state", "-s", type=click.Choice([s.value for s in RunState]), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--owner", default=None, help="Only runs of the workflows of this owner.")
@click.option("--tag", default=None, help="Only runs of the workflows with this tag.")
def runs(
    workflow: str | None, state: str | None, limit: int, owner: str | None, tag: str | None
) -> None:
    """List recent runs, newest first."""
    from orchestrator.views import runs_table

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            return await runs_table(
                db, workflow=workflow, state=state, limit=limit, owner=owner, tag=tag
            )
        finally:
            await db.close()

    click.echo(_run(go))


@main.command()
@click.argument("run_id", type=int)
def show(run_id: int) -> None:
    """Show a run: its task states and the transition timeline."""
    from orchestrator.views import show_run

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            return await show_run(db, run_id)
        finally:
            await db.close()

    click.echo(_run(go))


@main.command()
@click.argument("name", required=False)
@click.argument("slots", type=click.IntRange(1), required=False)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def pools(name: str | None, slots: int | None, reason: str) -> None:
    """List pools, or set pool NAME to SLOTS slots."""
    from orchestrator.engine import Engine
    from orchestrator.views import render_table

    settings = _settings()
    if (name is None) != (slots is None):
        _fail("give both NAME and SLOTS to set a pool, or neither to list them")

    async def go() -> str:
        db = await _database(settings)
        try:
            if name is not None and slots is not None:
                await Engine(db).set_pool(name, slots, actor=cli_actor(), reason=reason)
                return f"pool {name} has {slots} slots"
            from orchestrator.store import SQL

            async with db.pool.acquire() as conn:
                rows = await conn.fetch(SQL.list_pools)
            return render_table(
                ("POOL", "SLOTS", "RUNNING"), [(r["name"], r["slots"], r["running"]) for r in rows]
            )
        finally:
            await db.close()

    click.echo(_run(go))


@main.command("audit")
@click.option("--workflow", "-w", default=None, help="Only actions on this workflow.")
@click.option("--run", "run_id", type=int, default=None, help="Only actions on this run.")
@click.option("--action", type=click.Choice(ACTIONS), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=50, show_default=True)
def audit_cmd(workflow: str | None, run_id: int | None, action: str | None, limit: int) -> None:
    """Who did what: operator actions, newest first."""
    from orchestrator.audit import entries
    from orchestrator.views import audit_table

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            found = await entries(db, workflow=workflow, run_id=run_id, action=action, limit=limit)
        finally:
            await db.close()
        return audit_table(found) if found else "no operator actions recorded"

    click.echo(_run(go))


from orchestrator import cli_pause  # noqa: E402 - registered after the core commands

main.add_command(cli_pause.pause)
main.add_command(cli_pause.unpause)
main.add_command(cli_pause.held)

if __name__ == "__main__":
    main()

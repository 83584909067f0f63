"""The ``orchestrator`` command."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Container
from pathlib import Path
from typing import Any

import click

from orchestrator.audit import ACTIONS
from orchestrator.cli_support import (
    cli_actor,
    cli_settings,
    echo_json,
    echo_page,
    fail,
    open_database,
    run_async,
)
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError
from orchestrator.states import TERMINAL_TASK_STATES, RunState, TaskState
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
    """Event-driven workflow orchestrator on PostgreSQL.

    \b
    Exit codes:
      0  done
      1  the work failed (a run that did not succeed under --wait,
         files that do not validate)
      2  usage, configuration or input error (unknown workflow, refused
         params, unreachable or unmigrated database)

    Commands that list or show take --json: the shapes of the HTTP API's
    answers (`orchestrator openapi`). Long commands report progress on stderr."""


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
@click.option(
    "--webhook-processes",
    type=click.IntRange(1, 1024),
    default=None,
    metavar="N",
    help="Processes serving the HTTP port (webhooks and the API), this one included "
    "(default: one per core).",
)
def run_cmd(path: Path | None, no_migrate: bool, webhook_processes: int | None) -> None:
    """Production mode: settings from ORCHESTRATOR_* variables; runs until SIGTERM."""
    from orchestrator.devmode import _run_loop, resolve_database_url, serve
    from orchestrator.http_processes import default_count

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
        await serve(
            settings,
            url,
            path or settings.workflows_path,
            reload=False,
            webhook_processes=webhook_processes or default_count(),
        )

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
    from orchestrator.secrets import unresolved

    for warning in unresolved(result.workflows.values()):
        click.secho(warning, fg="yellow", err=True)
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
                first = await progress_line(db, run_id)
                click.echo(first, err=True)
                progress = asyncio.create_task(report_progress(db, run_id, first))
                try:
                    states = await waiter.wait([run_id], timeout=timeout)
                except TimeoutError:
                    raise OrchestratorError(
                        f"run {run_id} has not ended after {timeout}s (it goes on)"
                    ) from None
                finally:
                    progress.cancel()
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


async def progress_line(db: Any, run_id: int) -> str:
    """How far a run has come: ``run 7: 2/5 tasks ended (2 success, 1 running, ...)``."""
    from orchestrator.store import SQL

    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.task_state_counts, run_id)
    counts = {r["state"]: r["n"] for r in rows}
    ended = sum(n for state, n in counts.items() if TaskState(state) in TERMINAL_TASK_STATES)
    return (
        f"run {run_id}: {ended}/{sum(counts.values())} tasks ended ("
        + ", ".join(f"{n} {state}" for state, n in counts.items())
        + ")"
    )


async def report_progress(db: Any, run_id: int, last: str, every_s: float = 1.0) -> None:
    """While a run is waited for: its progress on stderr whenever it changes."""
    while True:
        await SYSTEM_CLOCK.sleep(every_s)
        line = await progress_line(db, run_id)
        if line != last:
            click.echo(line, err=True)
            last = line


@main.command()
@click.argument("name", required=False)
@click.option("--owner", default=None, help="Only the workflows of this owner.")
@click.option("--tag", default=None, help="Only the workflows with this tag.")
@click.option("--json", "as_json", is_flag=True, help="As GET /api/v1/workflows[/NAME] answers.")
def workflows(name: str | None, owner: str | None, tag: str | None, as_json: bool) -> None:
    """List the registered workflows (what new runs start with: paused or
    not, owner, tags, triggers, next schedule time, newest run, events held
    while paused), or show NAME: its triggers and the params it accepts."""
    from orchestrator.views import describe_workflow, workflows_table

    settings = _settings()

    async def go() -> str:
        from dataclasses import asdict

        from orchestrator.workflow_list import list_workflows, workflow_summary

        db = await _database(settings)
        try:
            if as_json:
                if name is not None:
                    echo_json(asdict(await workflow_summary(db, name)))
                else:
                    found = await list_workflows(db, owner=owner, tag=tag)
                    # Every workflow at once: there is no page after this one.
                    echo_page([asdict(w) for w in found])
                return ""
            if name is not None:
                return await describe_workflow(db, name)
            return await workflows_table(db, owner=owner, tag=tag)
        finally:
            await db.close()

    if out := _run(go):
        click.echo(out)


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

    from orchestrator.retention import count_prunable, prune as prune_history

    settings = _settings()
    cutoff = SYSTEM_CLOCK.now() - timedelta(days=days or settings.retention_days)
    keep = settings.lifecycle_topic is not None

    async def go() -> str:
        db = await _database(settings)
        try:
            if dry_run:
                counts = await count_prunable(db, cutoff, keep_unpublished=keep)
                return f"would prune {counts} (older than {cutoff:%Y-%m-%d %H:%M} UTC)"
            pruned = await prune_history(
                db, cutoff, batch=settings.prune_batch, keep_unpublished=keep
            )
            return f"pruned {pruned}"
        finally:
            await db.close()

    click.echo(_run(go))


@main.command()
@click.option("--workflow", "-w", default=None)
@click.option("--state", "-s", type=click.Choice([s.value for s in RunState]), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--owner", default=None, help="Only runs of the workflows of this owner.")
@click.option("--tag", default=None, help="Only runs of the workflows with this tag.")
@click.option("--json", "as_json", is_flag=True, help="As the API's run list (items, next).")
def runs(
    workflow: str | None,
    state: str | None,
    limit: int,
    owner: str | None,
    tag: str | None,
    as_json: bool,
) -> None:
    """List recent runs, newest first."""
    from dataclasses import asdict

    from orchestrator.run_reads import list_runs
    from orchestrator.views import runs_table
    from orchestrator.workflow_list import list_workflows

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            if as_json:
                names = None
                if owner is not None or tag is not None:
                    names = [w.name for w in await list_workflows(db, owner=owner, tag=tag)]
                found = await list_runs(
                    db, workflow=workflow, state=state, limit=limit, workflows=names
                )
                echo_page([asdict(r) for r in found])
                return ""
            return await runs_table(
                db, workflow=workflow, state=state, limit=limit, owner=owner, tag=tag
            )
        finally:
            await db.close()

    if out := _run(go):
        click.echo(out)


@main.command()
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="As GET /api/v1/runs/RUN answers.")
def show(run_id: int, as_json: bool) -> None:
    """Show a run: its task states and the transition timeline."""
    from orchestrator.views import show_run, show_run_json

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            if as_json:
                echo_json(await show_run_json(db, run_id))
                return ""
            return await show_run(db, run_id)
        finally:
            await db.close()

    if out := _run(go):
        click.echo(out)


@main.command()
@click.argument("name", required=False)
@click.argument("slots", type=click.IntRange(1), required=False)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="List as the API does.")
def pools(name: str | None, slots: int | None, reason: str, as_json: bool) -> None:
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
            if as_json:
                echo_page([dict(r) for r in rows])
                return ""
            return render_table(
                ("POOL", "SLOTS", "RUNNING"), [(r["name"], r["slots"], r["running"]) for r in rows]
            )
        finally:
            await db.close()

    if out := _run(go):
        click.echo(out)


@main.command("audit")
@click.option("--workflow", "-w", default=None, help="Only actions on this workflow.")
@click.option("--run", "run_id", type=int, default=None, help="Only actions on this run.")
@click.option("--action", type=click.Choice(ACTIONS), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As the API's audit list.")
def audit_cmd(
    workflow: str | None, run_id: int | None, action: str | None, limit: int, as_json: bool
) -> None:
    """Who did what: operator actions, newest first."""
    from dataclasses import asdict

    from orchestrator.audit import AuditEntry, entries
    from orchestrator.views import audit_table

    settings = _settings()

    async def go() -> list[AuditEntry]:
        db = await _database(settings)
        try:
            return await entries(db, workflow=workflow, run_id=run_id, action=action, limit=limit)
        finally:
            await db.close()

    found = _run(go)
    if as_json:
        echo_page([asdict(e) for e in found])
    else:
        click.echo(audit_table(found) if found else "no operator actions recorded")


@main.command("openapi")
def openapi_cmd() -> None:
    """Print the API's OpenAPI 3.1 document (also served at /api/v1/openapi.json)."""
    from orchestrator.api import describe_api

    click.echo(json.dumps(describe_api(), indent=2, default=str))


def _add_commands() -> None:
    """Commands that live in modules of their own."""
    from orchestrator import cli_pause
    from orchestrator.cli_alerts import alerts_cmd
    from orchestrator.cli_datasets import datasets_cmd, lineage_cmd
    from orchestrator.cli_dead_letters import dead_letters_cmd
    from orchestrator.cli_events import events_cmd
    from orchestrator.cli_logs import logs_cmd
    from orchestrator.cli_operations import COMMANDS as operations
    from orchestrator.cli_tokens import tokens_cmd

    main.add_command(tokens_cmd)
    main.add_command(dead_letters_cmd)
    main.add_command(events_cmd)
    main.add_command(datasets_cmd)
    main.add_command(lineage_cmd)
    main.add_command(logs_cmd)
    main.add_command(alerts_cmd)
    for command in (cli_pause.pause, cli_pause.unpause, cli_pause.held):
        main.add_command(command)
    for command in operations:
        main.add_command(command)


_add_commands()

if __name__ == "__main__":
    main()

"""The ``orchestrator`` command."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable, Container
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestrator import logs
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings, load_settings
from orchestrator.states import RunState
from orchestrator.store import Database, connect

T = TypeVar("T")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except OrchestratorError as exc:
        _fail(str(exc))
        raise
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _fail(message: str, code: int = 2) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _run(main: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except OrchestratorError as exc:
        _fail(str(exc))
        raise AssertionError("unreachable") from None


async def _database(settings: Settings) -> Database:
    from orchestrator.devmode import resolve_database_url

    return await connect(resolve_database_url(settings), size=2, min_size=1)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    from orchestrator.views import failure_report
    from orchestrator.waiting import RunWaiter

    settings = _settings()
    params = parse_params(pairs, params_json)
    actor = f"cli:{getpass.getuser()}"

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
def workflows(name: str | None) -> None:
    """List the registered workflows (what new runs start with), or show NAME:
    its triggers and the params it accepts."""
    from orchestrator.views import describe_workflow, workflows_table

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            if name is not None:
                return await describe_workflow(db, name)
            return await workflows_table(db)
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


@main.command("backfill")
@click.argument("workflow")
@click.option(
    "--start",
    required=True,
    metavar="DATETIME",
    help="First logical date, ISO 8601 (2026-01-01, 2026-01-01T02:00+01:00); "
    "without an offset it is wall-clock time in the schedule's time zone.",
)
@click.option(
    "--end",
    required=True,
    metavar="DATETIME",
    help="Logical dates before this one (exclusive), same format as --start.",
)
@click.option(
    "--max-active",
    type=click.IntRange(1, 10_000),
    default=4,
    show_default=True,
    help="Most runs of this backfill unfinished at once.",
)
@click.option("--dry-run", is_flag=True, help="List the logical dates; create nothing.")
def backfill_cmd(workflow: str, start: str, end: str, max_active: int, dry_run: bool) -> None:
    """Run WORKFLOW for every interval of its schedule with a logical date in
    [--start, --end), at most --max-active at once, and wait for them. Dates
    that already have a run (from the scheduler or an earlier backfill) are
    reported and not run again. Exit 0 when every created run succeeded."""
    from datetime import datetime

    from orchestrator.engine import Engine
    from orchestrator.intake import Intake
    from triggers.backfill import BackfillResult, backfill, registered_spec

    settings = _settings()

    def parse(name: str, value: str) -> datetime:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not an ISO 8601 date or date-time "
                "(e.g. 2026-01-01 or 2026-01-01T02:00+01:00)",
                param_hint=f"--{name}",
            ) from None

    start_at, end_at = parse("start", start), parse("end", end)

    async def go() -> BackfillResult:
        db = await _database(settings)
        try:
            intake = Intake(Engine(db, lease_s=settings.lease_s))
            spec = await registered_spec(intake, workflow)
            return await backfill(
                intake,
                spec,
                start_at,
                end_at,
                max_active=max_active,
                dry_run=dry_run,
                progress=click.echo,
            )
        finally:
            await db.close()

    result = _run(go)
    sys.exit(0 if result.ok else 1)


@main.command()
@click.argument("topic")
@click.argument("values", nargs=-1, required=True, metavar="JSON...")
@click.option("--key", "-k", default=None, help="Message key: one key keeps its messages in order.")
def publish(topic: str, values: tuple[str, ...], key: str | None) -> None:
    """Publish each JSON value as one message on Kafka TOPIC and print where it
    landed (TOPIC[PARTITION]@OFFSET). Kafka is ORCHESTRATOR_KAFKA_BOOTSTRAP, else
    the embedded broker of `orchestrator dev` running in this directory."""
    from orchestrator.devmode import resolve_kafka_settings
    from triggers.kafka import publish as publish_json

    settings = _settings()
    documents = []
    for number, raw in enumerate(values, 1):
        try:
            documents.append(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"value {number} is not valid JSON: {exc}", param_hint="JSON"
            ) from None
    try:
        kafka = resolve_kafka_settings(settings)
    except OrchestratorError as exc:
        _fail(str(exc))
        return
    sent = _run(lambda: publish_json(kafka, topic, documents, key=key))
    for partition, offset in sent:
        click.echo(f"{topic}[{partition}]@{offset}")


@main.command("hook-send")
@click.argument("hook")
@click.argument("body", required=False)
@click.option("--url", default=None, help="Server base URL (default: http://HTTP_HOST:HTTP_PORT).")
@click.option("--id", "delivery_id", default=None, help="webhook-id; send one twice to see dedup.")
def hook_send(hook: str, body: str | None, url: str | None, delivery_id: str | None) -> None:
    """POST BODY (JSON text; default: stdin) to /hooks/HOOK, signed the Standard
    Webhooks way with the secret in ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>."""
    import uuid

    import aiohttp

    from orchestrator.settings import webhook_secret_variable
    from triggers.signatures import SecretFormatError, standard_headers

    settings = _settings()
    secret = settings.webhook_secret(hook)
    if secret is None:
        _fail(f"set {webhook_secret_variable(hook)} to the hook's whsec_ secret")
        return
    text = body if body is not None else sys.stdin.read()
    data = text.encode()
    msg_id = delivery_id or f"msg_{uuid.uuid4().hex}"
    try:
        headers = standard_headers(
            secret.get_secret_value(), msg_id, int(SYSTEM_CLOCK.now().timestamp()), data
        )
    except SecretFormatError as exc:
        _fail(f"{webhook_secret_variable(hook)}: {exc}")
        return
    headers["Content-Type"] = "application/json"
    base = url or f"http://{settings.http_host}:{settings.http_port}"
    target = f"{base}/hooks/{hook}"

    async def go() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(target, data=data, headers=headers) as resp,
        ):
            return resp.status, await resp.text()

    try:
        status, text = _run(go)
    except aiohttp.ClientError as exc:
        _fail(f"cannot reach {target}: {exc}")
        return
    click.echo(f"{status} {text}")
    sys.exit(0 if 200 <= status < 300 else 1)


@main.command()
@click.option("--workflow", "-w", default=None)
@click.option("--state", "-s", type=click.Choice([s.value for s in RunState]), default=None)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
def runs(workflow: str | None, state: str | None, limit: int) -> None:
    """List recent runs, newest first."""
    from orchestrator.views import runs_table

    settings = _settings()

    async def go() -> str:
        db = await _database(settings)
        try:
            return await runs_table(db, workflow=workflow, state=state, limit=limit)
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
def pools(name: str | None, slots: int | None) -> None:
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
                await Engine(db).set_pool(name, slots)
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


if __name__ == "__main__":
    main()

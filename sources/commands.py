"""The CLI commands of the built-in sources, added to ``orchestrator`` by their
plugins (:mod:`sources.plugins`): ``backfill`` (schedules), ``publish``
(Kafka) and ``hook-send`` (webhooks)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from orchestrator.cli_support import (
    cli_actor,
    cli_settings,
    fail,
    open_database,
    run_async,
    with_database,
)
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from sources.backfill import Reprocess


@click.command("backfill")
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
@click.option(
    "--reprocess",
    type=click.Choice(["failed", "all"]),
    default=None,
    help="Also clear and rerun the dates whose runs exist: those that failed, or all.",
)
@click.option(
    "--interval",
    default=None,
    metavar="15m|1h|1d|1w",
    help="Intervals of this length instead of the workflow's schedule.",
)
@click.option("--cron", default=None, metavar="EXPR", help="Intervals of this cron schedule.")
@click.option(
    "--timezone", default="UTC", show_default=True, help="Time zone of --interval / --cron."
)
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@click.option(
    "--detach",
    is_flag=True,
    help="Record the backfill and return: the scheduler's leader drives it "
    "(follow it with `orchestrator backfills show ID`).",
)
def backfill(
    workflow: str,
    start: str,
    end: str,
    max_active: int,
    dry_run: bool,
    reprocess: str | None,
    interval: str | None,
    cron: str | None,
    timezone: str,
    reason: str,
    detach: bool,
) -> None:
    """Run WORKFLOW for every interval of its schedule (or of --interval /
    --cron) with a logical date in [--start, --end), at most --max-active at
    once, and wait for them, with a progress line on stderr. Dates that
    already have a run (from the scheduler or an earlier backfill), or had
    one that retention has pruned, are reported and not run again; with
    --reprocess, existing runs are cleared and rerun. Exit 0 when every
    created or reprocessed run succeeded."""
    from datetime import datetime

    from orchestrator.engine import Engine
    from orchestrator.intake import Intake
    from sources.backfill import BackfillResult, backfill as backfill_runs, registered_spec

    settings = cli_settings()

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
    mode: Reprocess | None = "all" if reprocess == "all" else "failed" if reprocess else None
    if detach:
        if dry_run:
            fail("--dry-run shows what a backfill would do; leave out --detach")
        _detach(workflow, start, end, max_active, mode, interval, cron, timezone, reason)
        return

    async def go() -> BackfillResult:
        db = await open_database(settings)
        try:
            intake = Intake(Engine(db, lease_s=settings.lease_s))
            spec = await registered_spec(intake, workflow)
            return await backfill_runs(
                intake,
                spec,
                start_at,
                end_at,
                max_active=max_active,
                dry_run=dry_run,
                progress=click.echo,
                reprocess=mode,
                interval=interval,
                cron=cron,
                timezone=timezone,
                status=lambda line: click.echo(line, err=True),
                actor=cli_actor(),
                reason=reason,
            )
        finally:
            await db.close()

    result = run_async(go)
    sys.exit(0 if result.ok else 1)


def _detach(
    workflow: str,
    start: str,
    end: str,
    max_active: int,
    reprocess: Reprocess | None,
    interval: str | None,
    cron: str | None,
    timezone: str,
    reason: str,
) -> None:
    from orchestrator.engine import Engine
    from orchestrator.intake import Intake
    from sources.backfill import nothing_to_start
    from sources.backfill_jobs import submit

    settings = cli_settings()

    async def go() -> str:
        db = await open_database(settings)
        try:
            made, found = await submit(
                Intake(Engine(db, lease_s=settings.lease_s)),
                workflow,
                start,
                end,
                now=SYSTEM_CLOCK.now(),
                max_active=max_active,
                reprocess=reprocess,
                cron=cron,
                interval=interval,
                timezone=timezone,
                actor=cli_actor(),
                reason=reason,
            )
        finally:
            await db.close()
        if made is None:
            return nothing_to_start(found, reprocess)
        return (
            f"backfill {made.id} of {workflow}: {made.counts['total']} date(s) to run, at most "
            f"{max_active} at a time, driven by the scheduler; follow it with "
            f"`orchestrator backfills show {made.id}`"
        )

    click.echo(run_async(go))


@click.group("backfills", invoke_without_command=True)
@click.option("--workflow", "-w", default=None, help="Only backfills of this workflow.")
@click.option(
    "--state", type=click.Choice(["running", "done", "cancelled", "failed"]), default=None
)
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.pass_context
def backfills(ctx: click.Context, workflow: str | None, state: str | None, limit: int) -> None:
    """Detached backfills (`backfill … --detach`), newest first; `show ID`,
    `cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.views import render_table
    from sources.backfill_jobs import jobs

    found = with_database(lambda db: jobs(db, workflow=workflow, state=state, limit=limit))
    if not found:
        click.echo("no backfills")
        return
    click.echo(
        render_table(
            ("ID", "WORKFLOW", "RANGE", "STATE", "PROGRESS", "BY", "REASON"),
            [
                (
                    j.id,
                    j.workflow,
                    f"{j.start} .. {j.end}",
                    j.state,
                    j.progress(),
                    j.actor,
                    j.reason,
                )
                for j in found
            ],
        )
    )


@backfills.command("show")
@click.argument("backfill_id", type=int, metavar="ID")
def backfills_show(backfill_id: int) -> None:
    """One detached backfill: its range, progress, runs in flight, counts."""
    from sources.backfill_jobs import job

    j = with_database(lambda db: job(db, backfill_id))
    lines = [
        f"backfill {j.id} of {j.workflow}: {j.state}",
        f"  range      {j.start} .. {j.end}"
        + (f"  (cron {j.cron!r} in {j.timezone})" if j.cron else ""),
        f"  reprocess  {j.reprocess or '-'}   max active {j.max_active}",
        f"  by         {j.actor}" + (f": {j.reason}" if j.reason else ""),
        f"  progress   {j.progress()}",
        f"  running    {', '.join(map(str, j.active)) or '-'}",
        "  counts     " + ", ".join(f"{k} {v}" for k, v in j.counts.items()),
        f"  created    {j.created_at.isoformat()}",
    ]
    if j.ended_at is not None:
        lines.append(f"  ended      {j.ended_at.isoformat()}")
    if j.message:
        lines.append(f"  message    {j.message}")
    click.echo("\n".join(lines))


@backfills.command("cancel")
@click.argument("backfill_id", type=int, metavar="ID")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def backfills_cancel(backfill_id: int, reason: str) -> None:
    """Stop a detached backfill from starting more runs (those started go on)."""
    from sources.backfill_jobs import cancel

    j = with_database(lambda db: cancel(db, backfill_id, actor=cli_actor(), reason=reason))
    click.echo(f"backfill {j.id} cancelled; {len(j.active)} run(s) already started go on")


@click.command()
@click.argument("topic")
@click.argument("values", nargs=-1, required=True, metavar="JSON...")
@click.option("--key", "-k", default=None, help="Message key: one key keeps its messages in order.")
def publish(topic: str, values: tuple[str, ...], key: str | None) -> None:
    """Publish each JSON value as one message on Kafka TOPIC and print where it
    landed (TOPIC[PARTITION]@OFFSET). Kafka is ORCHESTRATOR_KAFKA_BOOTSTRAP, else
    the embedded broker of `orchestrator dev` running in this directory."""
    from orchestrator.devmode import resolve_kafka_settings
    from sources.kafka_publish import publish as publish_json

    settings = cli_settings()
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
        fail(str(exc))
    sent = run_async(lambda: publish_json(kafka, topic, documents, key=key))
    for partition, offset in sent:
        click.echo(f"{topic}[{partition}]@{offset}")


@click.command("hook-send")
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
    from orchestrator.signatures import SecretFormatError, standard_headers

    settings = cli_settings()
    secret = settings.webhook_secret(hook)
    if secret is None:
        fail(f"set {webhook_secret_variable(hook)} to the hook's whsec_ secret")
    text = body if body is not None else sys.stdin.read()
    data = text.encode()
    msg_id = delivery_id or f"msg_{uuid.uuid4().hex}"
    try:
        headers = standard_headers(
            secret.get_secret_value(), msg_id, int(SYSTEM_CLOCK.now().timestamp()), data
        )
    except SecretFormatError as exc:
        fail(f"{webhook_secret_variable(hook)}: {exc}")
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
        status, text = run_async(go)
    except aiohttp.ClientError as exc:
        fail(f"cannot reach {target}: {exc}")
    click.echo(f"{status} {text}")
    sys.exit(0 if 200 <= status < 300 else 1)

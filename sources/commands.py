"""The CLI commands of the built-in sources, added to ``orchestrator`` by their
plugins (:mod:`sources.plugins`): ``backfill`` (schedules), ``publish``
(Kafka) and ``hook-send`` (webhooks)."""

from __future__ import annotations

import json
import sys

import click

from orchestrator.cli_support import cli_actor, cli_settings, fail, open_database, run_async
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import OrchestratorError


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
    from sources.backfill import BackfillResult, registered_spec
    from sources.backfill import backfill as backfill_runs

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
                reprocess="all" if reprocess == "all" else "failed" if reprocess else None,
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
    from sources.signatures import SecretFormatError, standard_headers

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

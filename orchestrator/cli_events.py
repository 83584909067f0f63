"""``orchestrator events``: recent intake events and what each one did; ``show
ID`` for one with its payload and (masked) headers (see
:mod:`orchestrator.event_list`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from orchestrator.cli_support import (
    echo_json,
    echo_page,
    fail,
    with_database,
)

if TYPE_CHECKING:
    pass

STATUSES = ("dead_lettered", "dropped", "buffered", "started", "recorded")


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00+00:00)",
            param_hint="--since",
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@click.group("events", invoke_without_command=True)
@click.option("--source", default=None, help="Only this source's (kafka, webhook, file, …).")
@click.option("--workflow", "-w", default=None, help="Only those it started, held or refused.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only in this status.")
@click.option("--since", default=None, help="Received at or after this time (ISO 8601; UTC).")
@click.option("--redelivered", is_flag=True, help="Only those offered again.")
@click.option("--before", type=click.IntRange(1), default=None, help="Page on: ids below this.")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='{"items": [...] as GET /api/v1/events, "next": "--before ID" or null}.',
)
@click.pass_context
def events_cmd(
    ctx: click.Context,
    source: str | None,
    workflow: str | None,
    status: str | None,
    since: str | None,
    redelivered: bool,
    before: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Intake events, newest first: source, channel, status (dead_lettered,
    dropped, buffered, started, recorded), the runs each started. `show ID`
    for one; --before ID for the page after one."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.event_list import event_json, events
    from orchestrator.views import render_table

    when = _since(since)
    found = with_database(
        lambda db: events(
            db,
            source=source,
            workflow=workflow,
            status=status,
            since=when,
            redelivered=True if redelivered else None,
            before=before,
            limit=limit + 1,
        )
    )
    more = len(found) > limit
    found = found[:limit]
    next_before = found[-1].id if more else None
    if as_json:
        echo_page([event_json(e) for e in found], next_before=next_before)
        return
    if not found:
        click.echo("no events")
        return
    click.echo(
        render_table(
            ("ID", "RECEIVED", "SOURCE", "CHANNEL", "STATUS", "RUNS", "REDELIVERED", "REASON"),
            [
                (
                    e.id,
                    e.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                    e.source,
                    _short(e.channel, 40),
                    e.status,
                    ",".join(map(str, e.run_ids)) or "-",
                    e.redeliveries or "-",
                    _short(e.reason or ""),
                )
                for e in found
            ],
        )
    )
    if next_before is not None:
        click.echo(f"(more: --before {next_before})")


def _short(text: str, width: int = 60) -> str:
    line = text.replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


@events_cmd.command("show")
@click.argument("event_id", type=click.IntRange(1), metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="As GET /api/v1/events/{id} answers.")
def show(event_id: int, as_json: bool) -> None:
    """One event: its runs, status, payload and headers (credentials masked)."""
    from orchestrator.event_list import event, event_json

    e = with_database(lambda db: event(db, event_id))
    if e is None:
        fail(f"no event {event_id} (unknown, or pruned by retention): `orchestrator events`")
    if as_json:
        echo_json(event_json(e, full=True))
        return
    lines = [
        f"event {e.id}",
        f"  received   {e.received_at.isoformat()} (by {e.actor})",
        f"  source     {e.source}  channel {e.channel}",
        f"  dedup key  {e.dedup_key}",
        f"  status     {e.status}" + (f": {e.reason}" if e.reason else ""),
        f"  runs       {', '.join(map(str, e.run_ids)) or 'none'}",
    ]
    if e.redeliveries:
        lines.append(
            f"  offered    {e.redeliveries} more time(s), last "
            f"{e.last_redelivered_at.isoformat() if e.last_redelivered_at else '?'}"
        )
    for h in e.held:
        run = f", run {h.run_id}" if h.run_id is not None else ""
        lines.append(f"  held by    {h.workflow} ({h.policy}): {h.state}{run} {h.reason}".rstrip())
    for d in e.dead_letters:
        done = " (redriven)" if d.redriven else ""
        lines.append(
            f"  refused    dead letter {d.dead_letter_id}, {d.workflow or 'any'}: {d.error}{done}"
        )
    lines.append("  headers    " + json.dumps(e.headers, sort_keys=True))
    lines.append("  meta       " + json.dumps(e.meta, sort_keys=True, default=str))
    lines.append("  payload")
    lines.extend("    " + line for line in json.dumps(e.payload, indent=2).splitlines())
    click.echo("\n".join(lines))

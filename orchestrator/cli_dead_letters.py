"""``orchestrator dead-letters``: list intake's dead letters, show one, and
redrive them (see :mod:`orchestrator.dead_letters`)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from orchestrator.cli_support import (
    cli_actor,
    echo_page,
    fail,
    with_engine,
)

if TYPE_CHECKING:
    from orchestrator.engine import Engine


@click.group("dead-letters", invoke_without_command=True)
@click.option("--source", default=None, help="Only those of this source (kafka, webhook, …).")
@click.option("--workflow", "-w", default=None, help="Only those refused by this workflow.")
@click.option("--pending", is_flag=True, help="Only those not redriven yet.")
@click.option("--before", type=click.IntRange(1), default=None, help="Page on: ids below this.")
@click.option("--limit", "-n", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='{"items": [...] as GET /api/v1/dead-letters, "next": "--before ID" or null}.',
)
@click.pass_context
def dead_letters_cmd(
    ctx: click.Context,
    source: str | None,
    workflow: str | None,
    pending: bool,
    before: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Events intake could not use, newest first; `show ID` for one, `redrive`
    to route them again once the cause is fixed."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.dead_letters import dead_letters
    from orchestrator.views import render_table

    found = with_engine(
        lambda engine: dead_letters(
            engine,
            source=source,
            workflow=workflow,
            before=before,
            limit=limit + 1,
            redriven=False if pending else None,
        )
    )
    more = len(found) > limit
    found = found[:limit]
    next_before = found[-1].id if more else None
    if as_json:
        echo_page([d.as_json() for d in found], next_before=next_before)
        return
    if not found:
        click.echo("no dead letters")
        return
    click.echo(
        render_table(
            ("ID", "RECEIVED", "SOURCE", "CHANNEL", "WORKFLOW", "TRIES", "REDRIVEN", "ERROR"),
            [
                (
                    d.id,
                    d.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                    d.source,
                    d.channel,
                    d.workflow or "-",
                    d.attempts,
                    f"runs {','.join(map(str, d.redrive_run_ids)) or 'none'}"
                    if d.redriven_at
                    else "-",
                    _short(d.reason),
                )
                for d in found
            ],
        )
    )
    if next_before is not None:
        click.echo(f"(more: --before {next_before})")


def _short(text: str, width: int = 80) -> str:
    line = text.replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


@dead_letters_cmd.command("show")
@click.argument("letter_id", type=int, metavar="ID")
def show(letter_id: int) -> None:
    """One dead letter: payload, headers (secrets masked), error, when."""
    from orchestrator.dead_letters import dead_letter

    d = with_engine(lambda engine: dead_letter(engine, letter_id))
    lines = [
        f"dead letter {d.id}",
        f"  received   {d.received_at.isoformat()}",
        f"  source     {d.source}  channel {d.channel}",
        f"  dedup key  {d.dedup_key}",
        f"  workflow   {d.workflow or '-'}",
        f"  event      {d.event_id if d.event_id is not None else '- (not recorded as an event)'}",
        f"  error      {d.reason}",
        f"  attempts   {d.attempts} redrive(s) tried"
        + (f", last {d.last_attempt_at.isoformat()}" if d.last_attempt_at else ""),
    ]
    if d.redriven_at is not None:
        lines.append(
            f"  redriven   {d.redriven_at.isoformat()} by {d.redriven_by}: event "
            f"{d.redrive_event_id}, runs {', '.join(map(str, d.redrive_run_ids)) or 'none'}"
        )
    lines.append("  headers    " + json.dumps(d.headers, sort_keys=True))
    lines.append("  meta       " + json.dumps(d.meta, sort_keys=True, default=str))
    lines.append("  payload")
    payload = d.payload if isinstance(d.payload, str) else json.dumps(d.payload, indent=2)
    lines.extend("    " + line for line in payload.splitlines())
    click.echo("\n".join(lines))


@dead_letters_cmd.command("redrive")
@click.argument("ids", type=int, nargs=-1, metavar="[ID]...")
@click.option("--all", "every", is_flag=True, help="Every dead letter not redriven yet.")
@click.option("--workflow", "-w", default=None, help="With --all: only those of this workflow.")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def redrive_cmd(ids: tuple[int, ...], every: bool, workflow: str | None, reason: str) -> None:
    """Route dead letters again with the workflows registered now; each starts
    its runs once. Exit 0 when every one was redriven, 1 if some are still refused."""
    from orchestrator.dead_letters import pending_ids, redrive

    if every == bool(ids):
        fail("give dead letter IDs or --all (not both)")
    if workflow is not None and not every:
        fail("--workflow selects dead letters for --all; with IDs, leave it out")
    actor = cli_actor()

    async def work(engine: Engine) -> list[str] | None:
        chosen = list(ids) if ids else await pending_ids(engine, workflow=workflow)
        if not chosen:
            return None
        done = await redrive(engine, chosen, actor=actor, reason=reason)
        return [f"{'ok  ' if r.ok else 'FAIL'} {r.id}: {r.message}" for r in done]

    lines = with_engine(work)
    if lines is None:
        click.echo("no dead letters to redrive" + (f" for {workflow}" if workflow else ""))
        return
    click.echo("\n".join(lines))
    sys.exit(0 if all(line.startswith("ok") for line in lines) else 1)

"""``orchestrator alerts``: list alerts (undelivered ones too) and acknowledge
one (see :mod:`orchestrator.alerts`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from orchestrator.cli_support import (
    cli_actor,
    echo_page,
    with_database,
)

if TYPE_CHECKING:
    pass


_STATES = ("pending", "delivered", "undelivered", "unacked")


@click.group("alerts", invoke_without_command=True)
@click.option("--workflow", "-w", default=None, help="Only this workflow's alerts.")
@click.option(
    "--state", type=click.Choice(_STATES), default=None, help="Only alerts in this state."
)
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="As GET /api/v1/alerts answers.")
@click.pass_context
def alerts_cmd(
    ctx: click.Context, workflow: str | None, state: str | None, limit: int, as_json: bool
) -> None:
    """Alerts raised by the rules, newest first, with how their delivery went;
    `ack ID` acknowledges one."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.alerts import list_alerts
    from orchestrator.api_alerts import alert_json
    from orchestrator.views import render_table

    found = with_database(lambda db: list_alerts(db, workflow=workflow, state=state, limit=limit))
    if as_json:
        echo_page([alert_json(a) for a in found])
        return
    if not found:
        click.echo("no alerts")
        return
    click.echo(
        render_table(
            ("ID", "RAISED", "KIND", "WORKFLOW", "RUN", "TASK", "STATE", "ACK", "ERROR"),
            # An alert about a dataset names it where a run's names its task.
            [
                (
                    a.id,
                    a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    a.kind,
                    a.workflow,
                    a.run_id if a.run_id is not None else "-",
                    a.task_id or a.dataset or "-",
                    a.state,
                    (a.acked_by or "no") if a.require_ack else "-",
                    _short(_last_error(a.deliveries) or a.error or a.detail or ""),
                )
                for a in found
            ],
        )
    )


def _last_error(deliveries: list[dict[str, object]]) -> str | None:
    errors = [str(d["last_error"]) for d in deliveries if d.get("state") != "delivered"]
    errors = [e for e in errors if e and e != "None"]
    return f"delivery: {errors[-1]}" if errors else None


def _short(text: str, width: int = 70) -> str:
    line = text.replace("\n", " ")
    return line if len(line) <= width else line[: width - 1] + "…"


@alerts_cmd.command("ack")
@click.argument("alert_id", type=int, metavar="ID")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
def ack(alert_id: int, reason: str) -> None:
    """Acknowledge alert ID: it escalates no further (audited)."""
    from orchestrator.alerts import acknowledge

    actor = cli_actor()
    # An unknown or already acknowledged alert exits 2 with its message.
    with_database(lambda db: acknowledge(db, alert_id, actor=actor, reason=reason))
    click.echo(f"alert {alert_id} acknowledged by {actor}")

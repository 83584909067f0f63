"""``orchestrator datasets`` (datasets with their last update and freshness,
or one dataset's updates and the runs that consumed them) and ``orchestrator
lineage`` (the graph around a dataset or a workflow)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import click

from orchestrator.cli_support import (
    echo_json,
    echo_page,
    fail,
    with_database,
)

if TYPE_CHECKING:
    from orchestrator.store import Database


def _shown(stamp: str | None) -> str:
    """An API time (ISO 8601) as the other tables print times, UTC."""
    if not stamp:
        return "-"
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _now() -> datetime:
    from orchestrator.clock import SYSTEM_CLOCK

    return SYSTEM_CLOCK.now()


def _date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        fail(f"--date {value!r} is not a date (YYYY-MM-DD or ISO 8601)")
    return found if found.tzinfo else found.replace(tzinfo=UTC)


@click.command("datasets")
@click.argument("uri", required=False)
@click.option("--date", "date", default=None, help="With URI: only updates of this logical date.")
@click.option("--json", "as_json", is_flag=True, help="As the API answers.")
def datasets_cmd(uri: str | None, date: str | None, as_json: bool) -> None:
    """Datasets with their last update and freshness; with URI, the runs
    that consumed its updates (of --date)."""
    from orchestrator.views import render_table

    if uri is None:
        if date is not None:
            fail("--date needs a dataset URI")
        found = with_database(_listing)
        if as_json:
            echo_page(found)
            return
        if not found:
            click.echo("no datasets")
            return
        click.echo(
            render_table(
                ("URI", "LAST UPDATE", "UPDATES", "FRESHNESS", "PRODUCERS", "CONSUMERS"),
                [
                    (
                        d["uri"],
                        _shown(d["last_update"]),
                        d["updates"],
                        d["freshness"] or "-",
                        ", ".join(d["producers"]) or "-",
                        ", ".join(d["consumers"]) or "-",
                    )
                    for d in found
                ],
            )
        )
        return
    from orchestrator.run_datasets import consumers_of

    day = _date(date)
    consumers = with_database(lambda db: consumers_of(db, uri, day))
    if as_json:
        echo_page(consumers)
        return
    if not consumers:
        click.echo(f"no run consumed updates of {uri}" + (f" of {date}" if date else ""))
        return
    click.echo(
        render_table(
            ("UPDATE", "DATE", "RUN", "WORKFLOW", "STATE"),
            [
                (
                    c["dataset_event_id"],
                    c["logical_date"] or "-",
                    c["run_id"],
                    c["workflow"],
                    c["state"],
                )
                for c in consumers
            ],
        )
    )


async def _listing(db: Database) -> list[dict[str, Any]]:
    from orchestrator.lineage import Lineage, dataset_list

    async with db.pool.acquire() as conn:
        return await dataset_list(conn, Lineage(), _now())


@click.command("lineage")
@click.argument("node")
@click.option("--upstream", "direction", flag_value="upstream", help="Only what feeds NODE.")
@click.option("--downstream", "direction", flag_value="downstream", help="Only what NODE feeds.")
@click.option("--depth", type=click.IntRange(1, 1000), default=None, help="At most N steps away.")
@click.option("--json", "as_json", is_flag=True, help="As GET /api/v1/lineage answers.")
def lineage_cmd(node: str, direction: str | None, depth: int | None, as_json: bool) -> None:
    """The lineage graph around NODE (a dataset URI or a workflow name):
    datasets, the workflows and tasks that produce and consume them, each
    dataset's last update and freshness, each workflow's last run."""
    from orchestrator.lineage import Lineage, UnknownNodeError

    way: Literal["upstream", "downstream", "both"] = "both"
    if direction == "upstream":
        way = "upstream"
    elif direction == "downstream":
        way = "downstream"

    async def query(db: Database) -> dict[str, Any] | None:
        async with db.pool.acquire() as conn:
            try:
                view = await Lineage().query(conn, node, direction=way, depth=depth, now=_now())
            except UnknownNodeError:
                return None
        return view.as_json()

    found = with_database(query)
    if found is None:
        fail(f"no dataset or workflow named {node!r}", code=1)
    if as_json:
        echo_json(found)
        return
    click.echo(render_lineage(found))


def render_lineage(graph: dict[str, Any]) -> str:
    lines = []
    for n in graph["nodes"]:
        if n["kind"] == "dataset":
            fresh = f"  {n['freshness']}" if n["freshness"] else ""
            lines.append(f"dataset  {n['uri']}  last update {_shown(n['last_update'])}{fresh}")
        else:
            run = n["last_run"]
            state = f"run {run['id']} {run['state']}" if run else "no runs"
            lines.append(f"workflow {n['name']}  last {state}")
    if graph["edges"]:
        lines.append("")
        for e in graph["edges"]:
            arrow = "--produces-->" if e["relation"] == "produces" else "--consumed by-->"
            source, target = e["from"].split(":", 1)[1], e["to"].split(":", 1)[1]
            lines.append(f"{source} {arrow} {target}  ({e['tasks']})")
    return "\n".join(lines) if lines else json.dumps(graph)

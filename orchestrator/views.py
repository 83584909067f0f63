"""Plain-text rendering of the read side for ``runs``, ``show``, ``workflows``
and the failure report of ``trigger --wait`` (runs are read through
:mod:`orchestrator.run_reads`, as the API reads them).

Deferred tasks hold no worker slot, so nothing else tells an operator what a
run is waiting for: ``runs`` counts them per run (WAITING) and ``show`` says,
for each wait, what would end it and until when.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from orchestrator import task_logs
from orchestrator.audit import AuditEntry
from orchestrator.errors import UnknownRunError, UnknownWorkflowError
from orchestrator.run_reads import (
    RunDetail,
    TaskRecord,
    WaitRecord,
    failed_tasks,
    list_runs,
    read_run,
    run_id_bounds,
    run_record,
)
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL, Database
from orchestrator.workflow_list import list_workflows, workflow_summary


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "-"
    return f"{(end - start).total_seconds():.3f}s"


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def runs_table(
    db: Database,
    *,
    workflow: str | None,
    state: str | None,
    limit: int,
    owner: str | None = None,
    tag: str | None = None,
) -> str:
    names = None
    if owner is not None or tag is not None:
        names = [w.name for w in await list_workflows(db, owner=owner, tag=tag)]
        if not names:
            return f"no workflow {_filters(owner, tag)}"
    runs = await list_runs(db, workflow=workflow, state=state, limit=limit, workflows=names)
    if not runs:
        return "no runs"
    return render_table(
        ("RUN", "WORKFLOW", "STATE", "WAITING", "VERSION", "CREATED", "DURATION", "ACTOR"),
        [
            (
                r.id,
                r.workflow,
                r.state,
                r.waiting,
                r.version,
                _when(r.created_at),
                _duration(r.started_at, r.ended_at),
                r.actor,
            )
            for r in runs
        ],
    )


async def _run_detail(db: Database, run_id: int) -> RunDetail:
    detail = await read_run(db, run_id)
    if detail is None:
        bounds = await run_id_bounds(db)
        hint = missing_run_hint(run_id, oldest=bounds.oldest, newest=bounds.newest)
        raise UnknownRunError(run_id, hint)
    return detail


async def show_run_json(db: Database, run_id: int) -> dict[str, Any]:
    """The run as the API answers it (no callback URLs: their tokens end waits)."""
    from orchestrator.api import run_json
    from orchestrator.run_datasets import run_datasets

    found = run_json(await _run_detail(db, run_id))
    caused_by, updated = await run_datasets(db, run_id)
    if caused_by or updated:  # as GET /api/v1/runs/{id}/datasets answers
        found["datasets"] = {"caused_by": caused_by, "updated": updated}
    return found


async def show_run(db: Database, run_id: int) -> str:
    detail = await _run_detail(db, run_id)
    run, waits = detail.run, detail.waits
    # A deferred task's current wait is the one recorded by its current attempt.
    current = {(w.task_id, w.attempt): w for w in waits if w.state == "waiting"}
    out = [
        f"run {run.id}  {run.workflow}  version {run.version}  {run.state.upper()}",
        f"params {run.params}",
        f"created {_when(run.created_at)} by {run.actor}  "
        f"duration {_duration(run.started_at, run.ended_at)}",
        "",
        render_table(
            ("TASK", "STATE", "ATTEMPT", "HANDLER", "DURATION", "DETAIL"),
            [
                (
                    t.task_id,
                    t.state,
                    t.attempt,
                    t.handler,
                    _duration(t.started_at, t.ended_at),
                    _detail(t, current.get((t.task_id, t.attempt))),
                )
                for t in detail.tasks
            ],
        ),
    ]
    out += await _failed_log_tails(db, run.id, detail.tasks)
    if waits:
        out += ["", "waits:", _waits_table(waits)]
    out += await _dataset_lines(db, run.id)
    out += [
        "",
        "timeline:",
        render_table(
            ("AT", "TASK", "FROM", "TO", "ATTEMPT", "ACTOR", "REASON"),
            [
                (
                    _when(s.at),
                    s.task_id or "(run)",
                    s.from_state or "-",
                    s.to_state,
                    "" if s.attempt is None else s.attempt,
                    s.actor,
                    s.reason or "",
                )
                for s in detail.transitions
            ],
        ),
    ]
    if detail.audit:
        out += ["", "operator actions:", audit_table(detail.audit)]
    return "\n".join(out)


async def _dataset_lines(db: Database, run_id: int) -> list[str]:
    """The dataset updates that started the run, and those its tasks made."""
    from orchestrator.run_datasets import run_datasets

    caused_by, updated = await run_datasets(db, run_id)
    out: list[str] = []
    for title, updates in (("caused by dataset updates:", caused_by), ("updated:", updated)):
        if updates:
            rows = [
                (
                    u["id"],
                    u["uri"],
                    u["logical_date"] or "-",
                    f"run {u['run_id']} {u['task_id']}" if u["run_id"] else "external",
                    json.dumps(u["metadata"])[:60],
                )
                for u in updates
            ]
            out += ["", title, render_table(("UPDATE", "URI", "DATE", "BY", "METADATA"), rows)]
    return out


_FAILED = frozenset({"failed", "dead_lettered", "up_for_retry"})
_TAIL_LINES = 10


async def _failed_log_tails(db: Database, run_id: int, tasks: Sequence[TaskRecord]) -> list[str]:
    """The last lines of each failed attempt's captured log."""
    out: list[str] = []
    for t in tasks:
        if t.state not in _FAILED or not t.attempt:
            continue
        lines = await task_logs.tail(db, run_id, t.task_id, t.attempt, _TAIL_LINES)
        if lines:
            out += [
                "",
                f"log of {t.task_id} attempt {t.attempt} (last lines; "
                f"orchestrator logs {run_id} {t.task_id} --attempt {t.attempt} for all):",
            ]
            out += [f"  {line.text}" for line in lines]
    return out


def audit_table(entries: Sequence[AuditEntry]) -> str:
    return render_table(
        ("ID", "AT", "ACTOR", "ACTION", "WORKFLOW", "RUN", "TASK", "REASON"),
        [
            (
                e.id,
                _when(e.at),
                e.actor,
                e.action,
                e.workflow or "",
                "" if e.run_id is None else e.run_id,
                e.task_id or "",
                e.reason,
            )
            for e in entries
        ],
    )


def missing_run_hint(run_id: int, *, oldest: int | None, newest: int | None) -> str:
    """Why ``show`` finds no run with ``run_id``, so that a skipped id does not
    look like lost data."""
    listing = "`orchestrator runs` lists recent runs"
    if newest is None:
        return "there are no runs yet (or retention deleted them all)"
    if run_id > newest:
        return f"the newest run is {newest}; {listing}"
    skipped = (
        "run ids are unique and increasing but not dense: an id may have been drawn for "
        "a redelivered Kafka message or webhook, or by a refused trigger, and never used, "
        "or belong to a run deleted by retention (ORCHESTRATOR_RETENTION_DAYS)"
    )
    if oldest is not None and run_id < oldest:
        return f"the oldest run kept is {oldest}; {skipped}. {listing}"
    return f"{skipped}. The newest run is {newest}; {listing}"


def _until(wait: WaitRecord) -> str:
    if wait.timeout_at is None:
        return "no timeout"
    return f"until {_when(wait.timeout_at)} (then {wait.on_timeout})"


def _waiting_for(wait: WaitRecord) -> str:
    # The operator running `show` gets the URL that ends an open callback wait.
    if wait.callback_url:
        return f"{wait.description}: POST {wait.callback_url}"
    return wait.description


def _waits_table(waits: Sequence[WaitRecord]) -> str:
    """Every wait of the run, current and ended: what it waited for and how it ended."""
    return render_table(
        ("TASK", "ATTEMPT", "KIND", "STATE", "WAITING FOR", "WAKE AT", "TIMEOUT", "ENDED"),
        [
            (
                w.task_id,
                w.attempt,
                w.kind,
                w.state,
                _waiting_for(w),
                _when(w.wake_at),
                _until(w),
                _ended(w),
            )
            for w in waits
        ],
    )


def _ended(wait: WaitRecord) -> str:
    if wait.state == "waiting":
        return "-"
    by = f" by {wait.resolved_by}" if wait.resolved_by else ""
    return f"{wait.outcome or 'ended'} at {_when(wait.resolved_at)}{by}"


def _detail(task: TaskRecord, wait: WaitRecord | None = None) -> str:
    if task.state == "deferred" and wait is not None:
        wake = f", wake at {_when(wait.wake_at)}" if wait.wake_at else ""
        return f"waiting for {_waiting_for(wait)}, {_until(wait)}{wake}"
    if task.error:
        first = task.error.splitlines()[0]
        return first[:120]
    if task.state == "up_for_retry" and task.not_before:
        return f"next attempt after {_when(task.not_before)}"
    if task.state == "running" and task.lease_owner:
        return f"leased to {task.lease_owner} until {_when(task.lease_until)}"
    if task.output is not None:
        output = task.output
        return "output " + (output if len(output) <= 100 else output[:97] + "...")
    return ""


def _error_line(error: str | None, width: int = 160) -> str:
    first = (error or "").strip().splitlines()[0] if (error or "").strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."


async def failure_report(db: Database, run_id: int) -> str:
    """Why a run did not succeed: each failed task with its last attempt and
    error, then the tasks that did not run because of them."""
    run = await run_record(db, run_id)
    if run is None:
        raise UnknownRunError(run_id)
    tasks = await failed_tasks(db, run_id)
    lines = []
    for t in tasks:
        if t.state == "upstream_failed":
            continue
        lines.append(
            f"task {t.task_id} {t.state} on attempt {t.attempt}: "
            f"{_error_line(t.error) or 'no error recorded'}"
        )
    blocked = [t.task_id for t in tasks if t.state == "upstream_failed"]
    if blocked:
        lines.append(f"not run (upstream failed): {', '.join(blocked)}")
    if not lines:
        lines.append(f"run {run_id} is {run.state}; no task failed")
    lines.append(f"the whole history: orchestrator show {run_id}")
    return "\n".join(lines)


def _spec_of(text: str) -> WorkflowSpec | None:
    try:
        return WorkflowSpec.model_validate_json(text)
    except ValidationError:  # stored by an older release under rules since changed
        return None


def _filters(owner: str | None, tag: str | None) -> str:
    said = [f"owned by {owner!r}"] if owner is not None else []
    if tag is not None:
        said.append(f"tagged {tag!r}")
    return " and ".join(said)


async def workflows_table(db: Database, *, owner: str | None = None, tag: str | None = None) -> str:
    """Every registered workflow (of ``owner``, tagged ``tag``): paused state,
    version, owner, tags, triggers, next schedule time, newest run and the
    events it holds while paused."""
    found = await list_workflows(db, owner=owner, tag=tag)
    if not found:
        if owner is not None or tag is not None:
            return f"no workflow {_filters(owner, tag)}"
        return "no workflows registered (they are registered by `orchestrator run` or `dev`)"
    rows = []
    for w in found:
        state = f"paused ({w.on_pause})" if w.paused else "active"
        last = f"{w.last_run_id} {w.last_run_state}" if w.last_run_id is not None else "-"
        rows.append(
            (
                w.name,
                state,
                w.version,
                w.owner or "-",
                ",".join(w.tags) or "-",
                "; ".join(w.triggers) or "-",
                _when(w.next_schedule)[:16] if w.next_schedule else "-",
                last,
                w.live_runs,
                w.buffered,
                "?" if w.params is None else ", ".join(w.params) or "-",
                w.description,
            )
        )
    header = (
        "WORKFLOW",
        "STATE",
        "VERSION",
        "OWNER",
        "TAGS",
        "TRIGGERS",
        "NEXT SCHEDULE",
        "LAST RUN",
        "LIVE",
        "BUFFERED",
        "PARAMS",
        "DESCRIPTION",
    )
    return render_table(header, rows)


async def describe_workflow(db: Database, name: str) -> str:
    """One registered workflow: what starts it and the params it accepts."""
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.registered_workflows, name)
        if row is None:
            known = [r["name"] for r in await conn.fetch(SQL.registered_workflows, None)]
            raise UnknownWorkflowError(name, known)
    spec = _spec_of(row["spec"])
    out = [f"workflow {name}  version {row['current_version']}  live runs {row['live_runs']}"]
    if spec is None:
        return out[0] + "\n(its stored spec cannot be read by this release)"
    if spec.description:
        out.append(spec.description)
    summary = await workflow_summary(db, name)
    if summary.paused:
        why = f": {summary.pause_reason}" if summary.pause_reason else ""
        out.append(
            f"PAUSED since {_when(summary.paused_at)} by {summary.paused_by}{why} "
            f"(on_pause: {summary.on_pause}; {summary.buffered} buffered, "
            f"{summary.dropped} dropped)"
        )
    else:
        out.append(f"on_pause: {summary.on_pause}")
    if spec.owner or spec.tags:
        out.append(f"owner: {spec.owner or '-'}  tags: {', '.join(spec.tags) or '-'}")
    out.append(f"tasks: {', '.join(t.id for t in spec.tasks)}")
    for trigger in spec.triggers:
        out.append(f"trigger: {trigger.source} {trigger.target()}")
    schema = spec.param_schema
    if schema is None:
        out.append("params: any (none declared)")
        return "\n".join(out)
    out.append("params:")
    for param in schema.names:
        entry = schema.entries[param]
        if entry is None:
            out.append(f"  {param}: default {orjson.dumps(schema.defaults[param]).decode()}")
        else:
            about = f" - {entry.description}" if entry.description else ""
            out.append(f"  {param}: {entry.summary()}{about}")
    return "\n".join(out)

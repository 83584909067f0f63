"""Alerts: raised in the transaction of the transition that caused them.

The planner notes what alert rules may be set on (:class:`~orchestrator.plan.Happened`);
:class:`AlertRecorder` matches those against the rules of the run's workflow
version and the project-wide rules, without I/O, and writes the alerts that
match -- with their first deliveries -- in one statement of the same
transaction: an outbox. Nothing is written, and no round trip made, when no
rule matches. Relays deliver them (:mod:`orchestrator.alert_relay`).

An alert is raised once per (rule, run, task, kind): a unique key, so a
happening seen twice (a task cleared and dead-lettered again, two
triggerers) raises nothing new. Acknowledging one is an operator action,
guarded (once) and audited.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator import audit
from orchestrator.alert_spec import AlertKind, AlertRule
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.compiled import SpecCache
from orchestrator.errors import OrchestratorError
from orchestrator.notices import Notices
from orchestrator.plan import Happened
from orchestrator.spec import WorkflowSpec
from orchestrator.store import SQL, Database

log = logging.getLogger(__name__)

PROJECT = "*"
"""The scope of project-wide rules in an alert's rule key."""

_AFTER_FAILURE = AlertKind.RUN_SUCCEEDED_AFTER_FAILURE.value


class AlertNotFoundError(OrchestratorError):
    def __init__(self, alert_id: int) -> None:
        self.alert_id = alert_id
        super().__init__(f"no alert {alert_id}")


class AlreadyAcknowledgedError(OrchestratorError):
    def __init__(self, alert_id: int, by: str) -> None:
        self.alert_id = alert_id
        super().__init__(f"alert {alert_id} is already acknowledged (by {by})")


def rule_key(scope: str, index: int, rule: AlertRule) -> str:
    return f"{scope}:{rule.name or index}"


def _applies(rule: AlertRule, kind: str, task_id: str, tags: Sequence[str]) -> bool:
    if kind not in rule.on:
        return False
    if rule.tasks and task_id and task_id not in rule.tasks:
        return False
    return not rule.tags or any(t in tags for t in rule.tags)


def matching_rules(
    spec: WorkflowSpec, project: Sequence[AlertRule], kind: str, task_id: str = ""
) -> list[tuple[str, AlertRule]]:
    """The rules (with their keys) that ``kind`` of ``spec``'s run (or task) matches."""
    found = [
        (rule_key(spec.name, i, r), r)
        for i, r in enumerate(spec.alerts)
        if _applies(r, kind, task_id, spec.tags)
    ]
    found += [
        (rule_key(PROJECT, i, r), r)
        for i, r in enumerate(project)
        if _applies(r, kind, task_id, spec.tags)
    ]
    return found


def _routes_json(rule: AlertRule) -> str:
    return orjson.dumps(
        [{"key": r.key, "spec": r.model_dump(mode="json", exclude_none=True)} for r in rule.routes]
    ).decode()


def error_parts(error: str | None) -> tuple[str | None, str | None]:
    """``("ValueError", "bad input")`` from a stored ``"ValueError: bad input"``."""
    if not error:
        return None, None
    head, sep, rest = error.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and " " not in head:
        return head, rest
    return None, error


@dataclass(frozen=True, slots=True)
class Raise:
    """One alert to write."""

    rule: str
    spec: AlertRule
    happened: Happened


class AlertRecorder:
    """Matches happenings against rules and writes the alerts in the caller's transaction."""

    def __init__(self, project_rules: Sequence[AlertRule] = (), clock: Clock = SYSTEM_CLOCK):
        self.project_rules = tuple(project_rules)
        self.clock = clock

    async def record(
        self,
        conn: asyncpg.Connection,
        happened: Sequence[Happened],
        specs: SpecCache,
        notices: Notices,
    ) -> int:
        """Write the alerts ``happened`` raises; returns how many are new."""
        raises: list[Raise] = []
        after_failure: list[Raise] = []
        for h in happened:
            spec = (await specs.get(conn, h.version)).spec
            kind = _AFTER_FAILURE if h.kind == "run_succeeded" else h.kind
            for key, rule in matching_rules(spec, self.project_rules, kind, h.task_id):
                (after_failure if kind == _AFTER_FAILURE else raises).append(Raise(key, rule, h))
        if after_failure:
            raises += await _recovered(conn, after_failure)
        if not raises:
            return 0
        return await self.write(conn, await _with_failed_task(conn, raises), notices)

    def dataset_raises(self, stale: Happened, specs: Sequence[WorkflowSpec]) -> list[Raise]:
        """The alerts a stale dataset raises: the ``dataset_stale`` rules of
        ``specs`` (the workflows that read or write it), and the project's
        once. Each names the workflow whose rule it is (a project rule's: the
        first of ``specs``)."""
        found: dict[str, Raise] = {}
        for spec in specs:
            h = replace(stale, workflow=spec.name, version=spec.version)
            for key, rule in matching_rules(spec, self.project_rules, stale.kind):
                found.setdefault(key, Raise(key, rule, h))
        return list(found.values())

    async def write(
        self, conn: asyncpg.Connection, raises: Sequence[Raise], notices: Notices
    ) -> int:
        hs = [r.happened for r in raises]
        raised: int = await conn.fetchval(
            SQL.insert_alerts,
            [r.rule for r in raises],
            [_AFTER_FAILURE if h.kind == "run_succeeded" else h.kind for h in hs],
            [h.workflow for h in hs],
            [h.version for h in hs],
            [h.run_id for h in hs],
            [h.task_id for h in hs],
            [h.attempt for h in hs],
            [h.error for h in hs],
            [h.detail for h in hs],
            [_routes_json(r.spec) for r in raises],
            [r.spec.require_ack for r in raises],
            [r.spec.escalate_after for r in raises],
            self.clock.stamp(),
            [h.dataset for h in hs],
            [h.stale_after for h in hs],
        )
        if raised:
            notices.alerts = True
        return raised


async def _with_failed_task(conn: asyncpg.Connection, raises: list[Raise]) -> list[Raise]:
    """A failed run's alert carries the task that failed first (its attempt,
    error and log tail): one statement, only when such an alert is raised."""
    runs = sorted({h.run_id for r in raises if (h := r.happened).kind == "run_failed" and h.run_id})
    if not runs:
        return raises
    first = {r["run_id"]: r for r in await conn.fetch(SQL.first_failed_tasks, runs)}
    out = []
    for r in raises:
        failed = first.get(r.happened.run_id) if r.happened.kind == "run_failed" else None
        if failed is not None and not r.happened.task_id:
            h = replace(
                r.happened,
                task_id=failed["task_id"],
                attempt=failed["attempt"],
                error=failed["error"],
            )
            r = Raise(r.rule, r.spec, h)
        out.append(r)
    return out


async def _recovered(conn: asyncpg.Connection, candidates: Sequence[Raise]) -> list[Raise]:
    """Those of ``candidates`` (successful runs) whose previous run failed, or
    that failed themselves before an operator cleared them."""
    runs = {r.happened.run_id: r.happened.workflow for r in candidates}
    rows = await conn.fetch(SQL.previous_run_states, list(runs), list(runs.values()))
    failed_before = {r["id"] for r in rows if r["previous"] == "failed" or r["failed_itself"]}
    return [r for r in candidates if r.happened.run_id in failed_before]


# -- reading and acknowledging ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertView:
    id: int
    rule: str
    kind: str
    workflow: str
    version: str
    run_id: int | None
    task_id: str | None
    attempt: int | None
    error: str | None
    detail: str | None
    dataset: str | None
    stale_after: datetime | None
    state: str
    """pending, delivered or undelivered (across its routes)."""
    require_ack: bool
    acked_at: datetime | None
    acked_by: str | None
    ack_reason: str | None
    escalated_to: int
    escalate_at: datetime | None
    created_at: datetime
    deliveries: list[dict[str, Any]]


STATES = ("pending", "delivered", "undelivered", "unacked")


async def list_alerts(
    db: Database,
    *,
    workflow: str | None = None,
    state: str | None = None,
    before: int = 0,
    limit: int = 100,
) -> list[AlertView]:
    """Newest first; ``state`` one of :data:`STATES`; ``before`` an id to page back from."""
    if state is not None and state not in STATES:
        raise OrchestratorError(f"unknown alert state {state!r}: one of {', '.join(STATES)}")
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.list_alerts, before, workflow, state, limit)
    return [
        AlertView(
            id=r["id"],
            rule=r["rule"],
            kind=r["kind"],
            workflow=r["workflow"],
            version=r["version"],
            run_id=r["run_id"],
            task_id=r["task_id"] or None,
            attempt=r["attempt"],
            error=r["error"],
            detail=r["detail"],
            dataset=r["dataset"] or None,
            stale_after=r["stale_after"],
            state=r["state"],
            require_ack=r["require_ack"],
            acked_at=r["acked_at"],
            acked_by=r["acked_by"],
            ack_reason=r["ack_reason"],
            escalated_to=r["escalated_to"],
            escalate_at=r["escalate_at"],
            created_at=r["created_at"],
            deliveries=orjson.loads(r["deliveries"]) if r["deliveries"] else [],
        )
        for r in rows
    ]


async def acknowledge(
    db: Database, alert_id: int, *, actor: str, reason: str = "", clock: Clock = SYSTEM_CLOCK
) -> None:
    """Acknowledge an alert: its escalation stops. Guarded (once) and audited."""
    async with db.transaction() as conn:
        row = await conn.fetchrow(SQL.ack_alert, alert_id, actor, reason, clock.stamp())
        if row is None:
            found = await conn.fetchrow(SQL.get_alert_state, alert_id)
            if found is None:
                raise AlertNotFoundError(alert_id)
            raise AlreadyAcknowledgedError(alert_id, found["acked_by"] or "?")
        await audit.record(
            conn,
            audit.Action(
                actor,
                "ack",
                reason,
                workflow=row["workflow"],
                run_id=row["run_id"],
                task_id=row["task_id"] or None,
                detail={"alert_id": alert_id, "kind": row["kind"]},
            ),
        )
    log.info("alert %d acknowledged by %s", alert_id, actor)

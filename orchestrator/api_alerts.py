"""Alerts over HTTP: ``GET /api/v1/alerts`` (viewer) and
``POST /api/v1/alerts/{id}/ack`` (operator: audited)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator import alerts
from orchestrator.api_bodies import page, read_body, read_query
from orchestrator.api_models import Page
from orchestrator.api_rules import MAX_ID, path_int
from orchestrator.callers import actor_of
from orchestrator.engine import Engine
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response


def _engine(request: web.Request) -> Engine:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


class AlertsQuery(BaseModel):
    workflow: str | None = Field(default=None, description="Only this workflow's alerts.")
    state: Literal["pending", "delivered", "undelivered", "unacked"] | None = Field(
        default=None,
        description="pending (being sent), delivered, undelivered (gave up: look at "
        "last_error), unacked (waiting for an acknowledgement).",
    )
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: int = Field(default=0, ge=0, le=MAX_ID, description="Page on: ids below this.")


class AlertDelivery(BaseModel):
    route: str
    route_index: int
    state: str
    attempts: int
    last_error: str | None
    next_at: str | None
    delivered_at: str | None


class Alert(BaseModel):
    id: int
    rule: str
    kind: str
    workflow: str
    version: str
    run_id: int | None
    """None for an alert about a dataset (``dataset_stale``)."""
    task_id: str | None
    attempt: int | None
    error: str | None
    detail: str | None
    dataset: str | None
    """The dataset a ``dataset_stale`` alert is about."""
    stale_after: datetime | None
    """Its last update before the stale spell."""
    state: str
    """pending, delivered or undelivered, across its routes."""
    require_ack: bool
    acked_at: datetime | None
    acked_by: str | None
    ack_reason: str | None
    escalated_to: int
    """Index of the last route of the chain the alert went to."""
    escalate_at: datetime | None
    created_at: datetime
    deliveries: list[AlertDelivery]


AlertList = Page[Alert]


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000)


class AckAnswer(BaseModel):
    id: int
    acked_by: str


def alert_json(view: alerts.AlertView) -> dict[str, Any]:
    return Alert.model_validate(view, from_attributes=True).model_dump(mode="json")


@operation(summary="List alerts, newest first", response=AlertList, query=AlertsQuery, tag="alerts")
async def list_alerts(request: web.Request) -> web.Response:
    q = read_query(request, AlertsQuery)
    found = await alerts.list_alerts(
        _engine(request).db, workflow=q.workflow, state=q.state, before=q.cursor, limit=q.limit + 1
    )
    return json_response(page(request, found, q.limit, item=alert_json))


@operation(
    summary="Acknowledge an alert: its escalation stops (audited)",
    response=AckAnswer,
    body=AckBody,
    path={"id": int},
    errors=(404, 409),
    tag="alerts",
)
async def ack_alert(request: web.Request) -> web.Response:
    alert_id = path_int(request, "id")
    body = await read_body(request, AckBody)
    engine = _engine(request)
    actor = actor_of(request)
    try:
        await alerts.acknowledge(
            engine.db, alert_id, actor=actor, reason=body.reason, clock=engine.clock
        )
    except alerts.AlertNotFoundError as exc:
        raise BadInput("path", "id", str(exc), status=404) from None
    except alerts.AlreadyAcknowledgedError as exc:
        raise BadInput("path", "id", str(exc), status=409) from None
    return json_response({"id": alert_id, "acked_by": actor})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/alerts", list_alerts)
    app.router.add_post("/api/v1/alerts/{id}/ack", ack_alert)

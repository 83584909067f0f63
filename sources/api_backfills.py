"""Backfills over HTTP: ``GET /api/v1/backfills``, ``GET /api/v1/backfills/{id}``,
``POST /api/v1/backfills`` (a detached backfill) and
``POST /api/v1/backfills/{id}/cancel``."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api_bodies import read_body, whole
from orchestrator.api_models import Backfill, BackfillList, NothingToBackfill
from orchestrator.api_rules import path_int, query_int
from orchestrator.callers import actor_of
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import UnknownWorkflowError
from orchestrator.intake import Intake
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response
from sources import backfill_jobs
from sources.backfill import BackfillError


def _intake(request: web.Request) -> Intake:
    from orchestrator.api import INTAKE_KEY

    return request.app[INTAKE_KEY]


class BackfillsQuery(BaseModel):
    workflow: str | None = None
    state: str | None = Field(default=None, description="running, done or cancelled.")
    limit: int = Field(default=50, ge=1, le=1000)


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    workflow: str
    start: str = Field(description="The first logical date (ISO 8601).")
    end: str = Field(description="The last logical date (ISO 8601).")
    max_active: int = Field(default=4, ge=1, le=10_000)
    reprocess: Literal["failed", "all"] | None = None
    interval: str | None = Field(default=None, description="e.g. 1h, 1d (no schedule trigger).")
    cron: str | None = None
    timezone: str | None = None
    reason: str | None = None


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", description="Why, for the audit log.")


@operation(summary="List backfills", response=BackfillList, query=BackfillsQuery, tag="backfills")
async def list_backfills(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in backfill_jobs.STATES:
        raise BadInput(
            "query", "state", f"unknown state {state!r}; one of {', '.join(backfill_jobs.STATES)}"
        )
    found = await backfill_jobs.jobs(
        _intake(request).engine.db,
        workflow=request.query.get("workflow"),
        state=state,
        limit=query_int(request, "limit", default=50, high=1000),
    )
    return json_response(whole([j.as_json() for j in found]))


@operation(
    summary="Read a backfill and its progress",
    response=Backfill,
    path={"id": int},
    errors=(404,),
    tag="backfills",
)
async def get_backfill(request: web.Request) -> web.Response:
    backfill_id = path_int(request, "id")
    try:
        found = await backfill_jobs.job(_intake(request).engine.db, backfill_id)
    except backfill_jobs.UnknownBackfillError as exc:
        raise BadInput("path", "id", str(exc), status=404) from None
    return json_response(found.as_json())


@operation(
    summary="Cancel a detached backfill (runs already started go on)",
    response=Backfill,
    body=ReasonBody,
    path={"id": int},
    errors=(404, 409),
    tag="backfills",
)
async def cancel_backfill(request: web.Request) -> web.Response:
    backfill_id = path_int(request, "id")
    reason = (await read_body(request, ReasonBody)).reason
    try:
        found = await backfill_jobs.cancel(
            _intake(request).engine.db, backfill_id, actor=actor_of(request), reason=reason
        )
    except backfill_jobs.UnknownBackfillError as exc:
        raise BadInput("path", "id", str(exc), status=404) from None
    except backfill_jobs.BackfillEndedError as exc:
        raise BadInput("path", "id", str(exc), status=409) from None
    return json_response(found.as_json())


@operation(
    summary="Start a detached backfill, driven by the scheduler",
    response=Backfill,
    status=201,
    also={200: NothingToBackfill},
    body=BackfillBody,
    errors=(404,),
    tag="backfills",
)
async def create_backfill(request: web.Request) -> web.Response:
    """A detached backfill: ``{"workflow", "start", "end"}`` and optionally
    ``max_active``, ``reprocess``, ``interval`` or ``cron``, ``timezone``, ``reason``."""
    body = await read_body(request, BackfillBody)
    intake = _intake(request)
    try:
        made, found = await backfill_jobs.submit(
            intake,
            body.workflow,
            body.start,
            body.end,
            now=SYSTEM_CLOCK.now(),
            max_active=body.max_active,
            reprocess=body.reprocess,
            cron=body.cron,
            interval=body.interval,
            timezone=body.timezone or "UTC",
            actor=actor_of(request),
            reason=body.reason or "",
        )
    except UnknownWorkflowError as exc:
        raise BadInput("body", "workflow", str(exc), status=404) from None
    except BackfillError as exc:
        status = 404 if "unknown workflow" in str(exc) else 400
        raise BadInput("body", "", str(exc), status=status) from None
    if made is None:
        return json_response(
            {
                "backfill": None,
                "existed": len(found.existing),
                "pruned": len(found.result.pruned),
                "detail": "nothing to start: every date in the range was processed already",
            }
        )
    return json_response(made.as_json(), 201)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/backfills", list_backfills)
    app.router.add_post("/api/v1/backfills", create_backfill)
    app.router.add_get("/api/v1/backfills/{id}", get_backfill)
    app.router.add_post("/api/v1/backfills/{id}/cancel", cancel_backfill)

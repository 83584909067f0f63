"""Backfills over HTTP: ``GET /api/v1/backfills``, ``GET /api/v1/backfills/{id}``,
``POST /api/v1/backfills`` (a detached backfill) and
``POST /api/v1/backfills/{id}/cancel``."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator.api_models import Backfill, BackfillList, NothingToBackfill
from orchestrator.api_rules import path_int, query_int
from orchestrator.callers import actor_of
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.errors import UnknownWorkflowError
from orchestrator.intake import Intake
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response
from sources import backfill_jobs
from sources.backfill import REPROCESS, BackfillError

_BODY_KEYS = (
    "workflow",
    "start",
    "end",
    "max_active",
    "reprocess",
    "interval",
    "cron",
    "timezone",
    "reason",
)


def _intake(request: web.Request) -> Intake:
    from orchestrator.api import INTAKE_KEY

    return request.app[INTAKE_KEY]


class BackfillsQuery(BaseModel):
    workflow: str | None = None
    state: str | None = Field(default=None, description="running, done or cancelled.")
    limit: int = Field(default=50, ge=1, le=1000)


class BackfillBody(BaseModel):
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
    reason: str = ""


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
    return json_response({"backfills": [j.as_json() for j in found]})


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
    body = await _body(request, optional=True)
    unexpected = sorted(k for k in body if k != "reason")
    if unexpected:
        raise BadInput("body", f"body.{unexpected[0]}", "the only key is 'reason'")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise BadInput("body", "body.reason", "'reason' must be a string")
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
    body = await _body(request)
    unexpected = sorted(k for k in body if k not in _BODY_KEYS)
    if unexpected:
        raise BadInput(
            "body",
            f"body.{unexpected[0]}",
            f"unexpected key(s) {', '.join(map(repr, unexpected))}; known: {', '.join(_BODY_KEYS)}",
        )
    text: dict[str, str | None] = {}
    for key in ("workflow", "start", "end", "interval", "cron", "timezone", "reason"):
        value = body.get(key)
        if value is None and key in ("workflow", "start", "end"):
            raise BadInput("body", f"body.{key}", f"'{key}' is required")
        if value is not None and not isinstance(value, str):
            raise BadInput("body", f"body.{key}", f"'{key}' must be a string")
        text[key] = value
    max_active = body.get("max_active", 4)
    if type(max_active) is not int or not 1 <= max_active <= 10_000:
        raise BadInput("body", "body.max_active", "'max_active' must be an integer from 1 to 10000")
    reprocess = body.get("reprocess")
    if reprocess is not None and reprocess not in REPROCESS:
        raise BadInput(
            "body", "body.reprocess", f"'reprocess' must be one of {', '.join(REPROCESS)}"
        )
    intake = _intake(request)
    workflow, start, end = text["workflow"], text["start"], text["end"]
    assert workflow is not None and start is not None and end is not None
    try:
        made, found = await backfill_jobs.submit(
            intake,
            workflow,
            start,
            end,
            now=SYSTEM_CLOCK.now(),
            max_active=max_active,
            reprocess=reprocess,
            cron=text["cron"],
            interval=text["interval"],
            timezone=text["timezone"] or "UTC",
            actor=actor_of(request),
            reason=text["reason"] or "",
        )
    except UnknownWorkflowError as exc:
        raise BadInput("body", "body.workflow", str(exc), status=404) from None
    except BackfillError as exc:
        status = 404 if "unknown workflow" in str(exc) else 400
        raise BadInput("body", "body", str(exc), status=status) from None
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


async def _body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if optional and not request.body_exists:
        return {}
    try:
        body = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("body", "body", "body must be a JSON object")
    return body


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/backfills", list_backfills)
    app.router.add_post("/api/v1/backfills", create_backfill)
    app.router.add_get("/api/v1/backfills/{id}", get_backfill)
    app.router.add_post("/api/v1/backfills/{id}/cancel", cancel_backfill)

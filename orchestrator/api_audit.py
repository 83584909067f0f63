"""``GET /api/v1/audit``: who did what, newest first, filterable."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator import audit
from orchestrator.api_bodies import page, read_query
from orchestrator.api_models import AuditPage
from orchestrator.api_rules import MAX_ID
from orchestrator.openapi import operation
from orchestrator.problems import json_response

AuditAction = Literal[audit.ACTIONS]  # type: ignore[valid-type]


class AuditQuery(BaseModel):
    workflow: str | None = Field(default=None, description="Only actions on this workflow.")
    run: int | None = Field(default=None, ge=1, le=MAX_ID, description="Only actions on this run.")
    action: AuditAction | None = Field(default=None, description="Only this kind of action.")
    limit: int = Field(default=100, ge=1, le=1000, description="Entries per page.")
    cursor: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="From a previous page's `next`."
    )


@operation(
    summary="Operator actions, newest first", response=AuditPage, query=AuditQuery, tag="audit"
)
async def list_audit(request: web.Request) -> web.Response:
    from orchestrator.api import ENGINE_KEY

    query = read_query(request, AuditQuery)
    found = await audit.entries(
        request.app[ENGINE_KEY].db,
        workflow=query.workflow,
        run_id=query.run,
        action=query.action,
        before=query.cursor,
        limit=query.limit + 1,
    )
    return json_response(page(request, found, query.limit, item=asdict))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/audit", list_audit)

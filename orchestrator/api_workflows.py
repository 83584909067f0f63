"""Workflows over the API: list and describe them, pause and unpause.

- ``GET /api/v1/workflows[?owner=&tag=&paused=&limit=&cursor=]``: registered
  workflows by name, in pages, with their paused state, version, owner, tags,
  triggers, next schedule time, newest run and the events they hold
  (``buffered``, ``dropped``).
- ``GET /api/v1/workflows/{name}``: one of them.
- ``POST /api/v1/workflows/{name}/pause`` with ``{"reason"?, "hold_running"?}``:
  200 ``{"workflow", "paused": true, "changed"}``; pausing a paused workflow is
  idempotent (200, ``"changed": false``, nothing recorded).
- ``POST /api/v1/workflows/{name}/unpause`` with ``{"reason"?}``: 200
  ``{"workflow", "paused": false, "changed", "run_ids", "coalesced"}``.

- ``GET /api/v1/workflows/{name}/held[?state=&limit=]``: the events it held
  while paused (buffered, started, coalesced, dropped with the reason).

An unknown workflow is 404 naming it; a bad body is 400 naming the field.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator.api_bodies import page, read_query, whole
from orchestrator.api_models import HeldList, PauseAnswer, UnpauseAnswer, WorkflowList
from orchestrator.api_rules import query_int
from orchestrator.callers import actor_of
from orchestrator.errors import OperationRefusedError, UnknownWorkflowError
from orchestrator.openapi import operation
from orchestrator.pausing import pause_workflow, unpause_workflow
from orchestrator.problems import BadInput, FieldError, json_response, problem
from orchestrator.workflow_list import (
    WorkflowSummary,
    held_events,
    list_workflows,
    workflow_summary,
)

MAX_REASON = 2000
PAUSE_KEYS = ("reason", "hold_running")
UNPAUSE_KEYS = ("reason",)


def _engine(request: web.Request) -> Any:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    try:
        body = await request.json(loads=orjson.loads)
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("body", "body", "body must be a JSON object")
    for key in body:
        if key not in allowed:
            raise BadInput(
                "body", key, f"unexpected key {key!r} in the body (allowed: {', '.join(allowed)})"
            )
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise BadInput("body", "reason", f"'reason' must be a string of at most {MAX_REASON}")
    if "hold_running" in body and not isinstance(body["hold_running"], bool):
        raise BadInput("body", "hold_running", "'hold_running' must be true or false")
    return body


def _summary_json(summary: Any) -> dict[str, Any]:
    return asdict(summary)


class WorkflowsQuery(BaseModel):
    owner: str | None = Field(default=None, description="Only this owner's workflows.")
    tag: str | None = Field(default=None, description="Only workflows with this tag.")
    paused: bool | None = Field(default=None, description="true: only paused ones; false: others.")
    limit: int = Field(default=100, ge=1, le=1000, description="Workflows per page.")
    cursor: str | None = Field(
        default=None, min_length=1, description="From a previous page's `next` (a name)."
    )


class PauseBody(BaseModel):
    reason: str = Field(default="", max_length=MAX_REASON)
    hold_running: bool = Field(default=False, description="Hold the tasks of runs in flight too.")


class UnpauseBody(BaseModel):
    reason: str = Field(default="", max_length=MAX_REASON)


class HeldQuery(BaseModel):
    state: Literal["buffered", "started", "coalesced", "dropped"] | None = None
    limit: int = Field(default=100, ge=1, le=1000)


@operation(
    summary="List workflows: paused state, triggers, next schedule, last run, held events",
    response=WorkflowList,
    query=WorkflowsQuery,
    tag="workflows",
)
async def list_all(request: web.Request) -> web.Response:
    query = read_query(request, WorkflowsQuery)
    found = await list_workflows(
        _engine(request).db,
        owner=query.owner,
        tag=query.tag,
        paused=query.paused,
        after=query.cursor,
        limit=query.limit + 1,
    )
    return json_response(
        page(request, found, query.limit, item=_summary_json, cursor=lambda s: s.name)
    )


@operation(summary="Describe a workflow", response=WorkflowSummary, errors=(404,), tag="workflows")
async def get_one(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    try:
        summary = await workflow_summary(_engine(request).db, name)
    except UnknownWorkflowError as exc:
        return _unknown(exc)
    return json_response(_summary_json(summary))


def _unknown(exc: UnknownWorkflowError) -> web.Response:
    return problem(404, str(exc), errors=[FieldError("path", "name", str(exc))])


@operation(
    summary="Pause a workflow: no new runs from any source; events follow on_pause",
    response=PauseAnswer,
    body=PauseBody,
    errors=(404, 409),
    tag="workflows",
)
async def pause(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request, PAUSE_KEYS)
    try:
        changed = await pause_workflow(
            _engine(request),
            name,
            actor=actor_of(request),
            reason=body.get("reason", ""),
            hold_running=body.get("hold_running", False),
        )
    except UnknownWorkflowError as exc:
        return _unknown(exc)
    except OperationRefusedError as exc:
        return problem(409, str(exc))
    return json_response({"workflow": name, "paused": True, "changed": changed})


@operation(
    summary="Unpause a workflow: held events start their runs, in arrival order",
    response=UnpauseAnswer,
    body=UnpauseBody,
    errors=(404,),
    tag="workflows",
)
async def unpause(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request, UNPAUSE_KEYS)
    try:
        done = await unpause_workflow(
            _engine(request), name, actor=actor_of(request), reason=body.get("reason", "")
        )
    except UnknownWorkflowError as exc:
        return _unknown(exc)
    return json_response(
        {
            "workflow": name,
            "paused": False,
            "changed": done.changed,
            "run_ids": done.run_ids,
            "coalesced": done.coalesced,
        }
    )


HELD_STATES = ("buffered", "started", "coalesced", "dropped")


@operation(
    summary="Events a paused workflow held (buffered, started, coalesced, dropped)",
    response=HeldList,
    query=HeldQuery,
    errors=(404,),
    tag="workflows",
)
async def list_held(request: web.Request) -> web.Response:
    """``GET /api/v1/workflows/{name}/held[?state=&limit=]``: the events the
    workflow held while paused, newest first (dropped ones with the reason)."""
    name = request.match_info["name"]
    state = request.query.get("state")
    if state is not None and state not in HELD_STATES:
        raise BadInput(
            "query", "state", f"unknown state {state!r}; known: {', '.join(HELD_STATES)}"
        )
    limit = query_int(request, "limit", default=100, high=1000)
    db = _engine(request).db
    try:
        await workflow_summary(db, name)
    except UnknownWorkflowError as exc:
        return _unknown(exc)
    return json_response(whole(await held_events(db, name, state=state, limit=limit)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/workflows", list_all)
    app.router.add_get("/api/v1/workflows/{name}", get_one)
    app.router.add_post("/api/v1/workflows/{name}/pause", pause)
    app.router.add_post("/api/v1/workflows/{name}/unpause", unpause)
    app.router.add_get("/api/v1/workflows/{name}/held", list_held)

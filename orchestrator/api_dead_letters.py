"""Dead letters over HTTP: ``GET /api/v1/dead-letters``, ``GET
/api/v1/dead-letters/{id}`` and ``POST /api/v1/dead-letters/redrive``."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator import dead_letters
from orchestrator.api_models import DeadLetterDetail, DeadLetterList, RedriveAnswer
from orchestrator.api_rules import MAX_ID, path_int, query_int
from orchestrator.callers import actor_of
from orchestrator.engine import Engine
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response

#: Most dead letters one redrive request may name.
MAX_REDRIVE = 1000
_BODY_KEYS = ("ids", "all", "workflow", "reason")


def _engine(request: web.Request) -> Engine:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


class DeadLettersQuery(BaseModel):
    source: str | None = Field(default=None, description="Only this source's dead letters.")
    workflow: str | None = Field(default=None, description="Only those for this workflow.")
    pending: Literal["true", "false"] = Field(
        default="false", description="true: only those not redriven yet."
    )
    limit: int = Field(default=100, ge=1, le=1000)
    before: int = Field(default=0, ge=0, le=MAX_ID, description="Page on: ids below this.")


class RedriveBody(BaseModel):
    """``ids`` or ``all`` (optionally of one ``workflow``)."""

    ids: list[int] | None = Field(default=None, min_length=1, max_length=MAX_REDRIVE)
    all: bool = False
    workflow: str | None = None
    reason: str = ""


@operation(
    summary="List dead letters, newest first",
    response=DeadLetterList,
    query=DeadLettersQuery,
    tag="dead letters",
)
async def list_dead_letters(request: web.Request) -> web.Response:
    before = query_int(request, "before", default=0, low=0)
    pending = request.query.get("pending", "false")
    if pending not in ("true", "false"):
        raise BadInput("query", "pending", "'pending' must be true or false")
    found = await dead_letters.dead_letters(
        _engine(request),
        source=request.query.get("source"),
        workflow=request.query.get("workflow"),
        before=before or None,
        limit=query_int(request, "limit", default=100, high=1000),
        include_redriven=pending == "false",
    )
    return json_response({"dead_letters": [d.as_json() for d in found]})


@operation(
    summary="Read a dead letter: payload, headers (masked), error",
    response=DeadLetterDetail,
    path={"id": int},
    errors=(404,),
    tag="dead letters",
)
async def get_dead_letter(request: web.Request) -> web.Response:
    letter_id = path_int(request, "id")
    try:
        found = await dead_letters.dead_letter(_engine(request), letter_id)
    except dead_letters.UnknownDeadLetterError as exc:
        raise BadInput("path", "id", str(exc), status=404) from None
    return json_response(found.as_json(full=True))


@operation(
    summary="Route dead letters again (each recorded once)",
    response=RedriveAnswer,
    body=RedriveBody,
    errors=(404,),
    tag="dead letters",
)
async def redrive(request: web.Request) -> web.Response:
    """``{"ids": [..]}`` or ``{"all": true, "workflow": "..."}``, and ``"reason"``."""
    try:
        body: Any = await request.json(loads=orjson.loads) if request.body_exists else None
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", "body", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput(
            "body", "body", 'body must be a JSON object: {"ids": [...]} or {"all": true}'
        )
    unexpected = sorted(k for k in body if k not in _BODY_KEYS)
    if unexpected:
        raise BadInput(
            "body",
            f"body.{unexpected[0]}",
            f"unexpected key(s) {', '.join(map(repr, unexpected))}; known: {', '.join(_BODY_KEYS)}",
        )
    ids, every = body.get("ids"), body.get("all", False)
    workflow, reason = body.get("workflow"), body.get("reason", "")
    if not isinstance(every, bool):
        raise BadInput("body", "body.all", "'all' must be true or false")
    if not isinstance(reason, str):
        raise BadInput("body", "body.reason", "'reason' must be a string")
    if workflow is not None and (not isinstance(workflow, str) or not every):
        raise BadInput(
            "body", "body.workflow", "'workflow' is a string that selects dead letters with 'all'"
        )
    if every == (ids is not None):
        raise BadInput("body", "body.ids", "give 'ids' (a list of dead letter ids) or 'all': true")
    if ids is not None and (
        not isinstance(ids, list)
        or not ids
        or len(ids) > MAX_REDRIVE
        or not all(type(i) is int and 1 <= i <= MAX_ID for i in ids)
    ):
        raise BadInput(
            "body",
            "body.ids",
            f"'ids' must be a list of 1 to {MAX_REDRIVE} dead letter ids (positive integers)",
        )
    engine = _engine(request)
    chosen = ids if ids is not None else await dead_letters.pending_ids(engine, workflow=workflow)
    try:
        done = await dead_letters.redrive(engine, chosen, actor=actor_of(request), reason=reason)
    except dead_letters.UnknownDeadLetterError as exc:
        raise BadInput("body", "body.ids", str(exc), status=404) from None
    return json_response({"redriven": [r.as_json() for r in done]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/dead-letters", list_dead_letters)
    app.router.add_post("/api/v1/dead-letters/redrive", redrive)
    app.router.add_get("/api/v1/dead-letters/{id}", get_dead_letter)

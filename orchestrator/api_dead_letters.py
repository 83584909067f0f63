"""Dead letters over HTTP: ``GET /api/v1/dead-letters``, ``GET
/api/v1/dead-letters/{id}`` and ``POST /api/v1/dead-letters/redrive``."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestrator import dead_letters
from orchestrator.api_bodies import RefusedField, page, read_body, read_query
from orchestrator.api_models import DeadLetterDetail, DeadLetterList, RedriveAnswer
from orchestrator.api_rules import MAX_ID, path_int
from orchestrator.callers import actor_of
from orchestrator.engine import Engine
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response

#: Most dead letters one redrive request may name.
MAX_REDRIVE = 1000


def _engine(request: web.Request) -> Engine:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY]


class DeadLettersQuery(BaseModel):
    source: str | None = Field(default=None, description="Only this source's dead letters.")
    workflow: str | None = Field(default=None, description="Only those for this workflow.")
    redriven: bool | None = Field(
        default=None, description="true: only those redriven; false: only those not yet."
    )
    limit: int = Field(default=100, ge=1, le=1000, description="Dead letters per page.")
    cursor: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="From a previous page's `next`."
    )


class RedriveBody(BaseModel):
    """``ids`` or ``all`` (optionally of one ``workflow``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REDRIVE,
        description="The dead letters to redrive (or give `all`).",
    )
    all: bool = Field(default=False, description="Every dead letter not redriven yet.")
    workflow: str | None = Field(default=None, description="With `all`: only this workflow's.")
    reason: str = Field(default="", description="Why, for the audit log.")

    @model_validator(mode="after")
    def _one_choice(self) -> RedriveBody:
        if self.all == (self.ids is not None):
            raise RefusedField("ids", "give 'ids' (a list of dead letter ids) or 'all': true")
        if self.workflow is not None and not self.all:
            raise RefusedField("workflow", "'workflow' selects dead letters with 'all'")
        return self


@operation(
    summary="List dead letters, newest first",
    response=DeadLetterList,
    query=DeadLettersQuery,
    tag="dead letters",
)
async def list_dead_letters(request: web.Request) -> web.Response:
    query = read_query(request, DeadLettersQuery)
    found = await dead_letters.dead_letters(
        _engine(request),
        source=query.source,
        workflow=query.workflow,
        before=query.cursor,
        limit=query.limit + 1,
        redriven=query.redriven,
    )
    return json_response(page(request, found, query.limit, item=lambda d: d.as_json()))


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
    body = await read_body(request, RedriveBody)
    ids, workflow, reason = body.ids, body.workflow, body.reason
    engine = _engine(request)
    chosen = ids if ids is not None else await dead_letters.pending_ids(engine, workflow=workflow)
    try:
        done = await dead_letters.redrive(engine, chosen, actor=actor_of(request), reason=reason)
    except dead_letters.UnknownDeadLetterError as exc:
        raise BadInput("body", "ids", str(exc), status=404) from None
    return json_response({"redriven": [r.as_json() for r in done]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/dead-letters", list_dead_letters)
    app.router.add_post("/api/v1/dead-letters/redrive", redrive)
    app.router.add_get("/api/v1/dead-letters/{id}", get_dead_letter)

"""Intake events over HTTP: ``GET /api/v1/events`` (newest first, filtered,
in pages) and ``GET /api/v1/events/{id}`` (with payload and masked headers).
See :mod:`orchestrator.event_list`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from orchestrator import event_list
from orchestrator.api_bodies import page, read_query
from orchestrator.api_models import Page
from orchestrator.api_rules import MAX_ID, path_int
from orchestrator.event_list import HeldBy, RefusedBy
from orchestrator.openapi import operation
from orchestrator.problems import BadInput, json_response

EventStatus = Literal["dead_lettered", "dropped", "buffered", "started", "recorded"]


class EventSummary(BaseModel):
    id: int
    source: str
    channel: str = Field(description="Topic, hook name, file path, or workflow name.")
    dedup_key: str
    actor: str
    received_at: datetime
    status: EventStatus = Field(
        description="dead_lettered, dropped (by a paused workflow), buffered (held while "
        "paused), started (runs), recorded (stored, started nothing)."
    )
    reason: str | None = Field(description="Why it is dead-lettered, dropped or buffered.")
    run_ids: list[int]
    redeliveries: int = Field(description="How often the same key was offered again.")
    last_redelivered_at: datetime | None
    held: list[HeldBy]
    dead_letters: list[RefusedBy]


class EventDetail(EventSummary):
    payload: Any = Field(description="The event's payload (JSON).")
    headers: dict[str, Any] = Field(description="Credential headers masked.")
    meta: dict[str, Any]


EventPage = Page[EventSummary]


class EventsQuery(BaseModel):
    source: str | None = Field(default=None, description="Only this source's events.")
    workflow: str | None = Field(
        default=None, description="Only events that started, were held or refused by it."
    )
    status: EventStatus | None = Field(default=None, description="Only events in this status.")
    since: datetime | None = Field(
        default=None, description="Only events received at or after this time (ISO 8601)."
    )
    redelivered: bool | None = Field(
        default=None, description="true: only events offered again; false: only once."
    )
    limit: int = Field(default=50, ge=1, le=1000, description="Events per page.")
    cursor: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="From a previous page's `next`."
    )

    @field_validator("since")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """A time without an offset is UTC; one that is not a time in UTC is refused."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("not a representable time") from None


def _db(request: web.Request) -> Any:
    from orchestrator.api import ENGINE_KEY

    return request.app[ENGINE_KEY].db


@operation(
    summary="List intake events, newest first", response=EventPage, query=EventsQuery, tag="events"
)
async def list_events(request: web.Request) -> web.Response:
    query = read_query(request, EventsQuery)
    found = await event_list.events(
        _db(request),
        source=query.source,
        workflow=query.workflow,
        status=query.status,
        since=query.since,
        redelivered=query.redelivered,
        before=query.cursor,
        limit=query.limit + 1,
    )
    return json_response(page(request, found, query.limit, item=event_list.event_json))


@operation(
    summary="Read an event: its runs, status, payload and (masked) headers",
    response=EventDetail,
    path={"id": int},
    errors=(404,),
    tag="events",
)
async def get_event(request: web.Request) -> web.Response:
    event_id = path_int(request, "id")
    found = await event_list.event(_db(request), event_id)
    if found is None:
        raise BadInput(
            "path",
            "id",
            f"no event with id {event_id} (unknown, or pruned by retention): "
            "GET /api/v1/events lists them",
            status=404,
        )
    return json_response(event_list.event_json(found, full=True))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/{id}", get_event)

"""The shapes of ``/api/v1`` answers, as the OpenAPI document states them
(:mod:`orchestrator.openapi`). Bodies and queries are read into the models
that the routes declare next to their handlers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.audit import AuditEntry
from orchestrator.run_reads import RunSummary, TransitionRecord
from orchestrator.workflow_list import WorkflowSummary


class FieldProblem(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    location: Literal["path", "query", "header", "body"] = Field(alias="in")
    name: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    error: str = Field(description="The same text as detail, for older clients.")
    errors: list[FieldProblem] = Field(default_factory=list)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """Every list the API answers: ``{"items": [...], "next": url-or-null}``
    (the CLI's ``--json`` lists have the same keys; its ``next`` names the
    option that reads on)."""

    items: list[T]
    next: str | None = Field(
        description="The next page's URL (same filters), or null on the last page."
    )

    @classmethod
    def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
        # OpenAPI component names may not hold brackets: Page[RunSummary] is RunSummaryPage.
        return f"{getattr(params[0], '__name__', 'Item')}Page"


RunPage = Page[RunSummary]


class Task(BaseModel):
    id: int
    task_id: str
    state: str
    attempt: int
    handler: str
    pool: str
    priority: int
    output: Any = Field(description="The task's output (JSON), once it succeeded.")
    error: str | None
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    not_before: datetime | None


class Wait(BaseModel):
    id: int
    task_id: str
    attempt: int
    kind: str
    state: str
    description: str
    wake_at: datetime | None
    timeout_at: datetime | None
    on_timeout: str
    outcome: str | None
    resolved_by: str | None
    created_at: datetime
    resolved_at: datetime | None


class RunDetail(BaseModel):
    id: int
    workflow: str
    version: str
    state: str
    params: dict[str, Any]
    logical_date: datetime | None
    actor: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    event_id: int | None = Field(
        description="The event that started the run (GET /api/v1/events/{id}), if kept."
    )
    tasks: list[Task]
    waits: list[Wait]
    transitions: list[TransitionRecord]
    audit: list[AuditEntry]


class Started(BaseModel):
    event_id: int
    run_ids: list[int]


class CallbackAccepted(BaseModel):
    event_id: int
    status: Literal["success", "failed"]


AuditPage = Page[AuditEntry]


class DeadLetter(BaseModel):
    id: int
    source: str
    channel: str
    dedup_key: str
    workflow: str | None
    error: str
    received_at: datetime
    event_id: int | None
    attempts: int
    last_attempt_at: datetime | None
    redriven_at: datetime | None
    redriven_by: str | None
    redrive_event_id: int | None
    redrive_run_ids: list[int] | None


class DeadLetterDetail(DeadLetter):
    payload: Any = Field(description="The event's payload; for a refused message, its raw text.")
    raw: str | None
    headers: dict[str, Any] = Field(description="Signature, token and secret headers masked.")
    meta: dict[str, Any]


DeadLetterList = Page[DeadLetter]


class RedriveOutcome(BaseModel):
    id: int
    redriven: bool
    already: bool
    event_id: int | None
    run_ids: list[int]
    message: str


class RedriveAnswer(BaseModel):
    redriven: list[RedriveOutcome]


class Backfill(BaseModel):
    id: int
    workflow: str
    start: str
    end: str
    cron: str | None
    timezone: str
    reprocess: Literal["failed", "all"] | None
    max_active: int
    state: str
    actor: str
    reason: str
    cursor: datetime | None
    active_run_ids: list[int]
    counts: dict[str, int]
    progress: str
    message: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


BackfillList = Page[Backfill]


class NothingToBackfill(BaseModel):
    backfill: None
    existed: int
    pruned: int
    detail: str


class Held(Started):
    """A trigger of a paused workflow: recorded, its run starts per ``on_pause``."""

    paused: bool


WorkflowList = Page[WorkflowSummary]


class PauseAnswer(BaseModel):
    workflow: str
    paused: bool
    changed: bool = Field(description="False: it was paused already; nothing recorded.")


class UnpauseAnswer(BaseModel):
    workflow: str
    paused: bool
    changed: bool
    run_ids: list[int] = Field(description="Runs of held events started now.")
    coalesced: int


class HeldEvent(BaseModel):
    id: int
    event_id: int
    trigger_key: str
    policy: Literal["buffer", "coalesce", "drop"]
    state: Literal["buffered", "started", "coalesced", "dropped"]
    reason: str
    run_id: int | None
    held_at: datetime
    released_at: datetime | None
    source: str
    channel: str


HeldList = Page[HeldEvent]

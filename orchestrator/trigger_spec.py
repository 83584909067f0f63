"""Triggers declared on a workflow: which events start it, and with what params.

A trigger's ``filter`` is a JMESPath expression and its ``params`` are
templates (``{{ JMESPath }}``), both evaluated against the event scope::

    {"payload": <the event body: JSON>, "headers": {...}, "meta": {...}}

``meta`` holds what the source knows: Kafka ``topic``, ``partition``,
``offset``, ``key``; a webhook's ``hook`` and ``delivery_id``; a file's
``path`` (relative to the landing zone), ``absolute_path``, ``size``,
``mtime``, ``sha256``; a schedule's ``logical_date``, ``interval_start`` and
``interval_end``.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.identifiers import IDENTIFIER

#: The names trigger templates and filters may start from.
EVENT_ROOTS = frozenset({"payload", "headers", "meta"})


class _Trigger(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    filter: str | None = None
    """JMESPath over the event scope; the trigger matches when it is truthy."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Run params, each value a template over the event scope."""


class KafkaTrigger(_Trigger):
    """A JSON message on a Kafka topic."""

    source: Literal["kafka"] = "kafka"
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._\-]+$")


class WebhookTrigger(_Trigger):
    """``POST /hooks/{hook}``; the secret comes from
    ``ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>`` (upper-cased, ``-`` as ``_``)."""

    source: Literal["webhook"] = "webhook"
    hook: str = Field(pattern=IDENTIFIER, max_length=100)
    auth: Literal["standard", "github", "bearer", "none"] = "standard"
    """``standard``: Standard Webhooks signatures; ``github``: X-Hub-Signature-256;
    ``bearer``: ``Authorization: Bearer <secret>``; ``none``: open (local use only)."""


class FileTrigger(_Trigger):
    """A complete file under the landing zone whose relative path matches ``glob``."""

    source: Literal["file"] = "file"
    glob: str = Field(min_length=1, max_length=500)
    """Relative to the landing zone, e.g. ``crm/*.csv`` (``**`` spans directories)."""
    complete_when: Literal["quiet", "marker"] = "quiet"
    """``quiet``: size and mtime unchanged for ``quiet_s``; ``marker``: ``marker`` exists."""
    quiet_s: float = Field(default=2.0, ge=0, le=86_400)
    marker: str = "{name}.done"
    """Marker file in the same directory: ``_SUCCESS``, or ``{name}.done`` for a per-file one."""
    on_done: Literal["keep", "move"] = "keep"
    """``move``: once the run ends, move the file to ``processed/`` or ``failed/``."""

    @field_validator("glob")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must be relative to the landing zone, without '..'")
        return value


class ScheduleTrigger(_Trigger):
    """A cron schedule; each run has a logical date (the interval's start)."""

    source: Literal["schedule"] = "schedule"
    cron: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    catchup: Literal["all", "latest", "none"] = "latest"
    """After downtime: a run for every missed interval, only the latest, or none."""
    start: datetime | None = None
    """No logical date before this one (default: when the schedule is first seen)."""

    @field_validator("cron")
    @classmethod
    def _cron_valid(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_known(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


TriggerSpec = Annotated[
    KafkaTrigger | WebhookTrigger | FileTrigger | ScheduleTrigger,
    Field(discriminator="source"),
]

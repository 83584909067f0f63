"""The trigger models of the built-in sources, registered by their plugins
(:mod:`sources.plugins`). What each source puts in ``meta``: Kafka ``topic``,
``partition``, ``offset``, ``key``; a webhook's ``hook`` and ``delivery_id``; a
file's ``path`` (relative to the landing zone), ``absolute_path``, ``size``,
``mtime``, ``sha256``; a schedule's ``logical_date``, ``interval_start`` and
``interval_end``."""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from orchestrator.globs import glob_regex
from orchestrator.identifiers import IDENTIFIER
from orchestrator.secrets import secret_reference
from orchestrator.trigger_spec import SharedSetting, Trigger


class KafkaTrigger(Trigger):
    """A JSON message on a Kafka topic."""

    source: Literal["kafka"] = "kafka"
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._\-]+$")

    def routed_channel(self) -> str:
        return self.topic

    def target(self) -> str:
        return f"topic {self.topic}"


class WebhookTrigger(Trigger):
    """``POST /hooks/{hook}``; the secret comes from
    ``ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>`` (upper-cased, ``-`` as ``_``)."""

    source: Literal["webhook"] = "webhook"
    hook: str = Field(pattern=IDENTIFIER, max_length=100)
    auth: Literal["standard", "github", "bearer", "none"] = "standard"
    """``standard``: Standard Webhooks signatures; ``github``: X-Hub-Signature-256;
    ``bearer``: ``Authorization: Bearer <secret>``; ``none``: open (local use only)."""
    secret: str | None = None
    """The hook's secret as ``{{ secrets.NAME }}`` (read from the secret
    backends when the hook is set up); default: ``ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>``."""

    secret_fields: ClassVar[tuple[str, ...]] = ("secret",)

    @field_validator("secret")
    @classmethod
    def _a_reference(cls, value: str | None) -> str | None:
        if value is not None and secret_reference(value) is None:
            raise ValueError(
                "must name a secret, e.g. '{{ secrets.SALES_HOOK }}': a secret written "
                "here would be stored with the workflow"
            )
        return value

    def routed_channel(self) -> str:
        return self.hook

    def target(self) -> str:
        return f"hook {self.hook}"

    def shared_setting(self) -> SharedSetting:
        # One secret and one scheme per hook: workflows sharing it must agree.
        value = self.auth if self.secret is None else f"{self.auth}, secret {self.secret}"
        return SharedSetting(f"webhook {self.hook!r}", "auth", value)


class FileTrigger(Trigger):
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

    def channel_pattern(self) -> re.Pattern[str]:
        return glob_regex(self.glob)

    def target(self) -> str:
        return f"glob {self.glob}"


class ScheduleTrigger(Trigger):
    """A cron schedule; each run has a logical date (the interval's start)."""

    source: Literal["schedule"] = "schedule"
    cron: str = Field(min_length=1, max_length=200)
    timezone: str = "UTC"
    catchup: Literal["all", "latest", "none"] = "latest"
    """After downtime: a run for every missed interval, only the latest, or none."""
    start: datetime | None = None
    """No logical date before this one (default: when the schedule is first seen)."""

    filterable: ClassVar[bool] = False

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

    def target(self) -> str:
        return f"cron {self.cron!r} {self.timezone}"

    def next_time(self, after: datetime) -> datetime | None:
        from sources.cron import CronError, schedule_of

        try:
            return schedule_of(self).next_fire(after)
        except CronError:  # a cron that never fires again
            return None

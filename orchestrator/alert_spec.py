"""Alert rules, routes and SLAs as declared on a workflow (or project-wide).

A rule names the kinds of happenings it is set on (:class:`AlertKind`),
optional filters, and the routes its alerts go to. Route options beyond
``type`` belong to the route (:mod:`orchestrator.alert_routes`): the built-in
ones are checked here, a route added by entry point checks its own when the
workflow is validated. Values of the form ``{{ secrets.NAME }}`` are secret
references, resolved only when an alert is delivered.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from orchestrator.identifiers import IDENTIFIER

__all__ = [
    "AlertKind",
    "AlertRule",
    "Duration",
    "RouteSpec",
    "SlaSpec",
    "parse_duration",
    "secret_reference",
]


class AlertKind(StrEnum):
    """What an alert rule may be set on."""

    TASK_DEAD_LETTERED = "task_dead_lettered"
    RUN_FAILED = "run_failed"
    SLA_MISSED = "sla_missed"
    SENSOR_TIMED_OUT = "sensor_timed_out"
    RUN_SUCCEEDED_AFTER_FAILURE = "run_succeeded_after_failure"
    DATASET_STALE = "dataset_stale"
    """A dataset the workflow reads or writes went stale (about no run)."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> Any:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"`` or ``"1d"``;
    anything else is left for the float check to refuse."""
    if not isinstance(value, str):
        return value
    text = value.strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration such as 90s, 15m, 2h or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=366 * 86_400)]
"""Seconds, or a text such as ``30s``, ``15m``, ``2h``, ``1h30m``."""

_SECRET_REF = re.compile(r"^\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_.-]{0,127})\s*\}\}$")


def secret_reference(value: str) -> str | None:
    """The secret named by ``{{ secrets.NAME }}``, or None for a plain value."""
    match = _SECRET_REF.match(value.strip())
    return match.group(1) if match else None


class WebhookOptions(BaseModel):
    """``type: webhook``: a POST signed with Standard Webhooks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(min_length=1, max_length=2000)
    """Where to POST; may be a secret reference."""
    secret: str
    """The ``whsec_…`` signing secret: a secret reference, never the value."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _secret_is_reference(self) -> WebhookOptions:
        if secret_reference(self.secret) is None:
            raise ValueError("secret must be a secret reference: '{{ secrets.NAME }}'")
        return self


class SlackOptions(BaseModel):
    """``type: slack``: a Slack incoming webhook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    """The incoming-webhook URL: a secret reference (the URL is the credential)."""
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _url_is_reference(self) -> SlackOptions:
        if secret_reference(self.url) is None:
            raise ValueError("url must be a secret reference: '{{ secrets.NAME }}'")
        return self


class LogOptions(BaseModel):
    """``type: log``: one structured log line (logger ``orchestrator.alerts``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    level: Literal["info", "warning", "error"] = "warning"


BUILT_IN_OPTIONS: dict[str, type[BaseModel]] = {
    "webhook": WebhookOptions,
    "slack": SlackOptions,
    "log": LogOptions,
}


class RouteSpec(BaseModel):
    """Where a rule's alerts go: ``type`` picks the route, the other keys are its options."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(pattern=IDENTIFIER, max_length=100)
    """``webhook``, ``slack``, ``log``, or a route registered by entry point."""
    name: str | None = Field(default=None, pattern=IDENTIFIER, max_length=200)
    """Names the route for rate limiting and listings; default: its type and a hash."""
    max_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    """Most alerts sent on this route per minute (across all relays); the rest
    wait for the next minute, none is dropped."""

    @model_validator(mode="after")
    def _built_in_options(self) -> RouteSpec:
        model = BUILT_IN_OPTIONS.get(self.type)
        if model is not None:
            model.model_validate(self.options)
        return self

    @property
    def options(self) -> dict[str, Any]:
        """What the route itself reads (everything but the common keys)."""
        return dict(self.model_extra or {})

    @property
    def key(self) -> str:
        """The route's identity for rate limits: its name, else type and content hash."""
        if self.name:
            return self.name
        digest = hashlib.sha256(
            orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        return f"{self.type}-{digest[:12]}"


class AlertRule(BaseModel):
    """Which happenings raise an alert, and where it goes."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str | None = Field(default=None, pattern=IDENTIFIER, max_length=200)
    """Identifies the rule in alerts (default: its position); an alert is
    raised once per (rule, run, task, kind), ``dataset_stale`` once per
    (rule, dataset, stale spell)."""
    on: tuple[AlertKind, ...] = Field(min_length=1)
    tasks: tuple[str, ...] = ()
    """Only happenings of these tasks (kinds about a whole run are not filtered)."""
    tags: tuple[str, ...] = ()
    """Only workflows with one of these tags (most useful project-wide)."""
    routes: tuple[RouteSpec, ...] = Field(min_length=1, max_length=20)
    """Every route gets the alert; with ``require_ack``, they are an
    escalation chain instead: the first at once, each next one after
    ``escalate_after`` without an acknowledgement."""
    require_ack: bool = False
    escalate_after: Duration = 900.0
    """With ``require_ack``: how long after a route got the alert the next one gets it."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads the bare key ``on`` as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if k is True else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _kinds_once(self) -> AlertRule:
        if len(set(self.on)) != len(self.on):
            raise ValueError("a kind is listed twice in 'on'")
        return self


class SlaSpec(BaseModel):
    """A workflow's promise: every run finishes within ``finish_within``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    finish_within: Duration
    from_: Literal["logical_date", "trigger"] = Field(default="trigger", alias="from")
    """Counted from the run's logical date (falls back to its trigger time
    when it has none) or from when it was triggered. Task ``deadline`` counts
    from the same point."""

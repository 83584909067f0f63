"""How a task names the datasets it reads (``inlets``) and writes (``outlets``).

A dataset is named by a URI with a scheme (``postgres://warehouse/sales_clean``,
``s3://bucket/path/{{ run.logical_date }}``, ``kafka://topic``). The URI may
hold templates over ``params``, ``run`` and ``task`` (the scope of a task's
inputs, without ``upstream`` and ``secrets``): it is rendered when the task
succeeds. An entry is a plain URI or a mapping that adds what freshness
expects of the dataset::

    outlets:
      - postgres://warehouse/sales_clean
      - {uri: "s3://lake/sales/{{ run.logical_date }}", fresh_within: 26h, cron: "0 2 * * *"}
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from orchestrator.templates import TemplateError, referenced_roots

__all__ = ["URI_PATTERN", "DatasetRef", "DatasetRefEntry", "parse_duration"]

#: A scheme, ``://`` and at least one more character.
URI_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://\S+$")

#: What an outlet URI template may read: no upstream outputs, no secrets (a
#: URI is shown everywhere).
URI_ROOTS = frozenset({"params", "run", "task"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``26h``, ``2d``, ``1w``; raises ``ValueError`` naming the text."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration (a number and s, m, h, d or w: 26h)")
    return timedelta(seconds=float(found.group(1)) * _UNIT_S[found.group(2)])


_TEMPLATE = re.compile(r"\{\{.*?\}\}")


def check_uri(value: str) -> str:
    if not URI_PATTERN.match(_TEMPLATE.sub("x", value)):
        raise ValueError(
            f"{value!r} is not a dataset URI (scheme://...: postgres://db/table, s3://bucket/path)"
        )
    try:
        roots = referenced_roots(value)
    except TemplateError as exc:
        raise ValueError(f"template in {value!r}: {exc}") from None
    unknown = roots - URI_ROOTS
    if unknown:
        raise ValueError(
            f"{value!r} uses {', '.join(sorted(unknown))}: dataset URIs may use only "
            f"{', '.join(sorted(URI_ROOTS))}"
        )
    return value


class DatasetRef(BaseModel):
    """One dataset a task reads or writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = Field(min_length=4, max_length=1000)
    """``scheme://...``; may hold templates over ``params``, ``run``, ``task``."""
    fresh_within: str | None = None
    """How old its last update may be before it counts as stale (``26h``)."""
    cron: str | None = None
    """When updates are expected; stale when an expected update is later
    than ``fresh_within`` (a cron over UTC)."""

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("fresh_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= timedelta(0):
            raise ValueError("must be longer than 0")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @property
    def max_age(self) -> timedelta | None:
        return parse_duration(self.fresh_within) if self.fresh_within else None


def _entry(value: Any) -> Any:
    """A plain URI stands for ``{uri: URI}``."""
    return {"uri": value} if isinstance(value, str) else value


DatasetRefEntry = Annotated[DatasetRef, BeforeValidator(_entry)]

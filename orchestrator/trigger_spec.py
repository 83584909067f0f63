"""Triggers declared on a workflow: which events start it, and with what params.

The core knows only :class:`Trigger`, the fields every trigger has. Each event
source registers its own subclass (``source: kafka`` with a ``topic``, ...)
through its plugin (:mod:`orchestrator.plugins`); a workflow's ``triggers``
are validated against the registered models, chosen by their ``source``.

A trigger's ``filter`` is a JMESPath expression and its ``params`` are
templates (``{{ JMESPath }}``), both evaluated against the event scope::

    {"payload": <the event body: JSON>, "headers": {...}, "meta": {...}}

``meta`` holds what the source knows (a Kafka ``topic`` and ``offset``, a
file's ``path``, a schedule's ``logical_date``: see each source).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

#: The names trigger templates and filters may start from.
EVENT_ROOTS = frozenset({"payload", "headers", "meta"})


@dataclass(frozen=True, slots=True)
class SharedSetting:
    """A setting every trigger on the same thing must agree on, e.g. a hook's auth."""

    thing: str
    """What is shared, as a person names it: ``webhook 'sales'``."""
    setting: str
    value: str


class Trigger(BaseModel):
    """What every trigger has. A source's model adds ``source: Literal[...]``
    (its name in YAML) and its own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    filter: str | None = None
    """JMESPath over the event scope; the trigger matches when it is truthy."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Run params, each value a template over the event scope."""

    #: False when the source's events carry nothing to filter (a schedule).
    filterable: ClassVar[bool] = True
    #: Settings that may name a secret (``{{ secrets.NAME }}``, nothing else),
    #: which the source resolves when it sets the trigger up: the spec keeps
    #: only the name.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def secret_settings(self) -> dict[str, str]:
        """Each of :attr:`secret_fields` that is set, with the secret it names."""
        from orchestrator.secrets import secret_reference

        found = {}
        for name in self.secret_fields:
            value = getattr(self, name)
            secret = secret_reference(value) if isinstance(value, str) else None
            if secret is not None:
                found[name] = secret
        return found

    def routed_channel(self) -> str | None:
        """The one event channel this trigger listens on (a topic, a hook),
        routed by exact match; None when it matches by :meth:`channel_pattern`
        or its events name their workflow and are not routed (a schedule)."""
        return None

    def channel_pattern(self) -> re.Pattern[str] | None:
        """A pattern the channel of an event must match in full (a file glob)."""
        return None

    def target(self) -> str:
        """What it listens on, for ``orchestrator workflows NAME``."""
        channel = self.routed_channel()
        return f"channel {channel}" if channel is not None else ""

    def next_time(self, after: datetime) -> datetime | None:
        """When this trigger next fires by itself after ``after`` (a schedule);
        None for triggers that wait for something to happen."""
        return None

    def shared_setting(self) -> SharedSetting | None:
        """A setting all workflows' triggers on the same thing must agree on."""
        return None


def _registered(value: Any, handler: ValidatorFunctionWrapHandler) -> Trigger:
    """A trigger built by the model its ``source`` names. Errors keep pydantic's
    locations (``triggers.0.kafka.topic``), so the loader names file, workflow
    and trigger as before."""
    if isinstance(value, Trigger):
        return value
    from orchestrator.plugins import source_registry  # the registry reads the plugins

    return source_registry().validate_trigger(value)


TriggerSpec = Annotated[SerializeAsAny[Trigger], WrapValidator(_registered)]
"""A workflow's trigger: one of the models the installed sources register."""

"""Routing an event to the workflow triggers it matches: by (source, channel)
or the trigger's channel pattern, its filter and params rendered from the
event (JMESPath on ``payload``, ``headers`` and ``meta``), and the correlation
keys a sensor's wait can be matched on."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath.exceptions import JMESPathError

from orchestrator.deferral import channel_key, correlation_key
from orchestrator.errors import OrchestratorError, ParamsError
from orchestrator.params import ParamsSchema
from orchestrator.plugins import SourceRegistry, source_registry
from orchestrator.spec import WorkflowSpec
from orchestrator.templates import Renderer, TemplateError, renderer
from orchestrator.trigger_spec import TriggerSpec

if TYPE_CHECKING:
    from orchestrator.intake import Event

#: Sources whose events come a few at a time (a person, and those plugins name
#: in ``looked_up_first``: a schedule, a backfill): their keys are looked up
#: before run ids are drawn, so repeating one (an Idempotency-Key, a logical
#: date) uses up no run id. Kafka and webhook batches skip that query on their
#: hot path: a redelivery there uses up the ids drawn for it (run ids are unique
#: and increasing, not dense). An up-front lookup cannot replace it: on a young
#: table the planner caches a plan that scans all events for it, while ON
#: CONFLICT always uses the unique index.
LOOKED_UP_FIRST = frozenset({"manual"})


def scope_of(event: Event) -> dict[str, Any]:
    return {"payload": event.payload, "headers": event.headers, "meta": event.meta}


@lru_cache(maxsize=1024)
def _compiled_filter(expression: str) -> Any:
    return jmespath.compile(expression)


@lru_cache(maxsize=1024)
def _field_path(expression: str) -> tuple[str, ...] | None:
    """The field names of ``expression`` when it is a plain path of fields
    (``payload.order_id``, what correlations almost always are), else None."""
    node = _compiled_filter(expression).parsed
    names: list[str] = []
    pending = [node]
    while pending:
        node = pending.pop()
        if node["type"] == "field":
            names.append(node["value"])
        elif node["type"] == "subexpression":
            pending.extend(reversed(node["children"]))
        else:
            return None
    return tuple(names)


def search(expression: str, scope: Mapping[str, Any]) -> Any:
    """``expression`` (JMESPath) over ``scope``. A plain path of fields is
    followed directly, with JMESPath's meaning (a missing field or a value
    that is not an object gives None): every event of a channel that sensors
    wait on is searched once per correlation, and the general evaluator costs
    more than the rest of matching the event."""
    path = _field_path(expression)
    if path is None:
        return _compiled_filter(expression).search(scope)
    value: Any = scope
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


@dataclass(frozen=True, slots=True)
class Route:
    workflow: str
    trigger: TriggerSpec
    schema: ParamsSchema | None = None
    """The params the workflow declares (None: it accepts any)."""
    key: str = ""
    """Which of the workflow's triggers (see :func:`trigger_key_of`)."""
    _params: Renderer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The params mapping is walked once, not for every event.
        object.__setattr__(self, "_params", renderer(self.trigger.params))

    def params_for(self, event: Event) -> dict[str, Any]:
        """The run params, checked against the workflow's declared params, or
        raise ``ValueError`` naming what failed."""
        scope = scope_of(event)
        if self.trigger.filter:
            try:
                if not _compiled_filter(self.trigger.filter).search(scope):
                    raise Unmatched
            except JMESPathError as exc:
                raise ValueError(f"filter {self.trigger.filter!r} failed: {exc}") from None
        try:
            params = self._params(scope)
        except TemplateError as exc:
            raise ValueError(f"params mapping failed: {exc}") from None
        if not isinstance(params, dict):
            raise ValueError("params mapping did not give an object")
        if self.schema is not None:
            try:
                return self.schema.check(params, workflow=self.workflow)
            except ParamsError as exc:
                raise ValueError(str(exc)) from None
        return params


def trigger_key_of(index: int) -> str:
    """How a held event names the trigger that matched it: its position."""
    return f"t{index}"


def trigger_at(spec: WorkflowSpec, key: str) -> TriggerSpec | None:
    """The trigger a held event's ``key`` names in ``spec``, if it is there."""
    if not key.startswith("t") or not key[1:].isdigit():
        return None
    index = int(key[1:])
    return spec.triggers[index] if index < len(spec.triggers) else None


class Unmatched(OrchestratorError):
    """The trigger's filter said no: not an error."""


class Router:
    """Which workflows an event starts, and which correlation keys it carries:
    indexes by source, built from the specs and what the source plugins declare.

    A trigger whose :meth:`~orchestrator.trigger_spec.Trigger.routed_channel` names
    one channel is found by one lookup; one with a channel pattern is matched
    against each event of its source; the rest (schedules) are not routed."""

    def __init__(
        self, workflows: Iterable[WorkflowSpec] = (), sources: SourceRegistry | None = None
    ) -> None:
        plugins = sources or source_registry()
        #: source -> channel -> routes
        self._exact: dict[str, dict[str, list[Route]]] = defaultdict(lambda: defaultdict(list))
        self._patterns: dict[str, list[tuple[re.Pattern[str], Route]]] = defaultdict(list)
        self._all: dict[str, list[Route]] = defaultdict(list)
        #: source -> channel -> correlation expressions its sensors wait on
        self._waits: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        #: sources whose waits may match an event's channel by pattern
        self.pattern_waits = frozenset(s.source for s in plugins.sensors.values() if s.by_pattern)
        #: source -> the key each of its events carries, from its channel
        self._keyed_by_channel = {s.source for s in plugins.sensors.values() if s.keyed_by_channel}
        self.looked_up_first = LOOKED_UP_FIRST | plugins.looked_up_first
        sensors = plugins.sensors
        for spec in workflows:
            for task in spec.tasks:
                sensor = sensors.get(task.handler)
                waited = sensor.waits_on(task.inputs) if sensor and sensor.waits_on else None
                if sensor is not None and waited is not None:
                    waited_channel, expression = waited
                    self._waits[sensor.source][waited_channel].add(expression)
            for index, trigger in enumerate(spec.triggers):
                route = Route(spec.name, trigger, spec.param_schema, trigger_key_of(index))
                self._all[trigger.source].append(route)
                channel = trigger.routed_channel()
                if channel is not None:
                    self._exact[trigger.source][channel].append(route)
                    continue
                pattern = trigger.channel_pattern()
                if pattern is not None:
                    self._patterns[trigger.source].append((pattern, route))
        # Plain dicts from here on: a lookup of an unknown key must not add it.
        self._exact = {source: dict(by) for source, by in self._exact.items()}
        self._patterns = dict(self._patterns)
        self._all = dict(self._all)
        self._waits = {source: dict(by) for source, by in self._waits.items()}

    def routes(self, event: Event) -> list[Route]:
        # routes_on, inlined: this runs for every event on the hot path.
        by_channel = self._exact.get(event.source)
        found = by_channel.get(event.channel, []) if by_channel is not None else []
        patterns = self._patterns.get(event.source)
        if patterns:
            found = found + [route for regex, route in patterns if regex.match(event.channel)]
        return found

    def routes_on(self, source: str, channel: str) -> list[Route]:
        """The routes of ``source``'s triggers that an event on ``channel`` matches."""
        by_channel = self._exact.get(source)
        found = by_channel.get(channel, []) if by_channel is not None else []
        patterns = self._patterns.get(source)
        if patterns:
            found = found + [route for regex, route in patterns if regex.match(channel)]
        return found

    def routes_of(self, source: str) -> list[Route]:
        """Every route of ``source``'s triggers."""
        return self._all.get(source, [])

    def channels(self, source: str) -> list[str]:
        """The channels of ``source`` to follow: those its triggers name and
        those its sensors wait on (e.g. the Kafka topics to consume)."""
        return sorted(set(self._exact.get(source, ())) | set(self._waits.get(source, ())))

    def event_keys(self, event: Event) -> list[str]:
        """Correlation keys of an event, for waits now or later: those the
        source gave, and one per expression a sensor waits on for its channel."""
        keys = list(event.keys)
        if event.source in self._keyed_by_channel:
            keys.append(channel_key(event.source, event.channel))
        by_channel = self._waits.get(event.source)
        expressions = by_channel.get(event.channel) if by_channel is not None else None
        if expressions:
            scope = scope_of(event)
            for expr in expressions:
                try:
                    value = search(expr, scope)
                except JMESPathError:
                    continue
                if value is not None:
                    keys.append(correlation_key(event.source, event.channel, expr, value))
        return keys

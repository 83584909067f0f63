"""Workflow specifications: the one model both Python and YAML authoring produce.

Field-level checks live here (pydantic); whole-graph checks (cycles, unknown
upstreams, template references, unknown handlers) live in
:mod:`orchestrator.validation`, which names file, workflow and task.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.alert_spec import AlertRule, Duration, SlaSpec
from orchestrator.dataset_refs import DatasetRefEntry
from orchestrator.identifiers import IDENTIFIER
from orchestrator.params import ParamSpec, ParamsSchema, build_schema, compact, schema_entry_error
from orchestrator.trigger_spec import TriggerSpec

__all__ = [
    "IDENTIFIER",
    "OnPause",
    "ParamSpec",
    "RetryPolicy",
    "TaskSpec",
    "TriggerRule",
    "WorkflowSpec",
]


class TriggerRule(StrEnum):
    """When a task with upstreams may run, given its upstreams' final states."""

    ALL_SUCCESS = "all_success"
    ALL_DONE = "all_done"
    ALL_FAILED = "all_failed"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    NONE_FAILED = "none_failed"


class OnPause(StrEnum):
    """What happens to an event that would start a run while the workflow is paused."""

    BUFFER = "buffer"
    """Recorded; its run starts at unpause, in arrival order, exactly once."""
    COALESCE = "coalesce"
    """Recorded; at unpause one run starts per trigger, with the latest event
    (its ``meta.coalesced`` holds how many earlier ones it stands for)."""
    DROP = "drop"
    """Recorded as dropped, with the reason; no run ever starts for it."""


TAG = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
"""An owner or a tag: a word, which may hold ``_ . : / -`` (``team:data``)."""


class RetryPolicy(BaseModel):
    """How a failed attempt is retried. Delay before attempt n+1 is
    ``min(initial_delay_s * factor**(n-1), max_delay_s)``, spread by ``jitter``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1, le=1000)
    """Total attempts, the first one included (1 = never retry)."""
    initial_delay_s: float = Field(default=1.0, ge=0, le=86_400)
    """Delay before the first retry, in seconds."""
    factor: float = Field(default=2.0, ge=1.0, le=100)
    """Multiplier applied to the delay after each failed attempt."""
    max_delay_s: float = Field(default=300.0, ge=0, le=7 * 86_400)
    """Upper bound of any single delay, in seconds."""
    jitter: float = Field(default=0.1, ge=0, le=1)
    """Fraction of the delay randomly added or removed (0.1 = +/-10%)."""
    non_retryable: tuple[str, ...] = ()
    """Exception type names (``ValueError`` or ``pkg.mod.MyError``) that fail at once."""
    dead_letter: bool = False
    """When retries are exhausted, end in ``dead_lettered`` instead of ``failed``."""

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s}) is smaller than "
                f"initial_delay_s ({self.initial_delay_s})"
            )
        return self


class TaskSpec(BaseModel):
    """One node of a workflow's DAG."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    handler: str = Field(min_length=1, max_length=200)
    """Registered handler name, e.g. ``noop`` or ``http.request``."""
    upstream: tuple[str, ...] = ()
    """Ids of the tasks that must reach a final state first."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the handler; strings may hold ``{{ expr }}`` templates."""
    retry: RetryPolicy | None = None
    """Falls back to the workflow's ``default_retry``."""
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    """Per-attempt timeout; falls back to the workflow's ``default_timeout_s``."""
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS
    pool: str = Field(default="default", pattern=IDENTIFIER, max_length=200)
    priority: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    max_concurrency: int | None = Field(default=None, ge=1)
    """At most this many instances of this task run at once, across all runs."""
    deadline: Duration | None = None
    """The task should have succeeded this long after the run's SLA start
    (the workflow's ``sla.from``, default: when the run was triggered); a
    miss raises ``sla_missed`` once, at the deadline."""
    inlets: tuple[DatasetRefEntry, ...] = Field(default=(), max_length=100)
    """Datasets the task reads (URIs; see :mod:`orchestrator.dataset_refs`)."""
    outlets: tuple[DatasetRefEntry, ...] = Field(default=(), max_length=100)
    """Datasets the task writes: each success records an update of each."""


def _valid_entry(value: Any) -> Any:
    problem = schema_entry_error(value)
    if problem is not None:
        raise PydanticCustomError("param_schema", "{problem}", {"problem": problem})
    return value


@lru_cache(maxsize=1024)
def _schema_of(params_json: bytes) -> ParamsSchema | None:
    return build_schema(orjson.loads(params_json))


ParamEntry = Annotated[Any, BeforeValidator(compact), AfterValidator(_valid_entry)]
"""A declared param: a plain default, or a schema entry (see :mod:`orchestrator.params`)."""


#: Settings left out of a version's canonical form while unset (empty or None).
_ADDED_WORKFLOW_KEYS = ("alerts", "sla")
_ADDED_TASK_KEYS = ("deadline", "inlets", "outlets")


class WorkflowSpec(BaseModel):
    """A named DAG of tasks. Its content hash is its version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=IDENTIFIER, max_length=200)
    description: str = ""
    tasks: tuple[TaskSpec, ...] = Field(min_length=1)
    max_active_runs: int | None = Field(default=None, ge=1)
    """Runs beyond this many wait in ``queued``; None = unlimited."""
    default_retry: RetryPolicy = RetryPolicy()
    default_timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    params: dict[str, ParamEntry] = Field(default_factory=dict)
    """The params runs accept: each a plain default value, or a schema entry
    (``{type: integer, default: 10}``, see :mod:`orchestrator.params`). Once
    any are declared, no others are accepted."""
    triggers: tuple[TriggerSpec, ...] = ()
    """Events that start this workflow: each one of the trigger models the
    installed sources register (Kafka, webhook, file, schedule, ...)."""
    on_pause: OnPause = OnPause.BUFFER
    """What events that arrive while the workflow is paused do (see :class:`OnPause`)."""
    owner: str | None = Field(default=None, pattern=TAG, max_length=200)
    """Who answers for the workflow (a team or a person); ``workflows --owner`` filters."""
    tags: tuple[Annotated[str, Field(pattern=TAG, max_length=100)], ...] = Field(
        default=(), max_length=50
    )
    """Free labels (``finance``, ``pii``); ``workflows --tag`` and ``runs --tag`` filter."""
    alerts: tuple[AlertRule, ...] = Field(default=(), max_length=50)
    """Alert rules (see :mod:`orchestrator.alert_spec`); project-wide rules apply too."""
    sla: SlaSpec | None = None
    """Runs should finish within this; a miss raises ``sla_missed`` once."""

    @model_validator(mode="after")
    def _tags_once(self) -> WorkflowSpec:
        seen: set[str] = set()
        for tag in self.tags:
            if tag in seen:
                raise ValueError(f"tag {tag!r} is listed twice")
            seen.add(tag)
        return self

    @model_validator(mode="after")
    def _alert_tasks_known(self) -> WorkflowSpec:
        known = {t.id for t in self.tasks}
        for i, rule in enumerate(self.alerts):
            unknown = [t for t in rule.tasks if t not in known]
            if unknown:
                raise ValueError(f"alerts[{i}] names unknown task(s) {', '.join(unknown)}")
        return self

    def task(self, task_id: str) -> TaskSpec:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)

    def retry_for(self, task: TaskSpec) -> RetryPolicy:
        return task.retry or self.default_retry

    def timeout_for(self, task: TaskSpec) -> float:
        return task.timeout_s or self.default_timeout_s

    @property
    def param_schema(self) -> ParamsSchema | None:
        """What ``params`` declares, ready to check run params; None if nothing."""
        if not self.params:
            return None
        # Cached by content, not on the instance: model_copy() would carry a
        # cached value over to a copy with other params.
        return _schema_of(orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS))

    @property
    def param_defaults(self) -> dict[str, Any]:
        """Values of the params a run is not given."""
        schema = self.param_schema
        return dict(schema.defaults) if schema else {}

    def canonical_json(self) -> bytes:
        data = self.model_dump(mode="json")
        # Settings added by later releases are left out while unset, so an
        # unchanged workflow keeps its version. (Not every default: a
        # trigger's `source` tag must stay for the spec to be read back.)
        for key in _ADDED_WORKFLOW_KEYS:
            if not data[key]:
                del data[key]
        for task in data["tasks"]:
            for key in _ADDED_TASK_KEYS:
                if not task[key]:
                    del task[key]
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    @property
    def version(self) -> str:
        """Content hash: identical specs share a version, any change makes a new one."""
        return hashlib.sha256(self.canonical_json()).hexdigest()[:16]

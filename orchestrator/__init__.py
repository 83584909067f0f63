"""Event-driven workflow orchestrator: durable state machine on PostgreSQL."""

from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, OrchestratorError, SpecError, TaskError
from orchestrator.registry import HandlerRegistry, handler
from orchestrator.spec import RetryPolicy, TaskSpec, TriggerRule, WorkflowSpec
from orchestrator.states import RunState, TaskState

__all__ = [
    "HandlerRegistry",
    "NonRetryableError",
    "OrchestratorError",
    "RetryPolicy",
    "RunState",
    "SpecError",
    "TaskContext",
    "TaskError",
    "TaskSpec",
    "TaskState",
    "TriggerRule",
    "WorkflowSpec",
    "handler",
]

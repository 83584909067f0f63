"""One exception tree. Errors carry structured fields, not just a message.

Every exception class the project defines derives from :class:`OrchestratorError`
(a unit test checks it). The general ones live here; an error that belongs to
one module (``TemplateError``, ``HTTPRequestError``, ``Defer``, a source's own
errors) is defined next to its code, still under this root, and may also
derive from the builtin a caller would expect (``SecretFormatError`` is a
``ValueError`` too).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class OrchestratorError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(OrchestratorError):
    """A setting is missing or invalid; the message names the key."""


class SpecError(OrchestratorError):
    """A workflow definition is invalid. Names the file, workflow and task."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        workflow: str | None = None,
        task: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.workflow = workflow
        self.task = task
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.workflow:
            where.append(f"workflow {self.workflow!r}")
        if self.task:
            where.append(f"task {self.task!r}")
        prefix = ": ".join([", ".join(where)]) if where else ""
        return f"{prefix}: {self.message}" if prefix else self.message


class UnknownWorkflowError(OrchestratorError):
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        self.known = sorted(known)
        """The workflows that are registered, for the suggestion."""
        super().__init__(
            f"unknown workflow {name!r}: it has not been registered with this database"
            f"{unknown_workflow_hint(name, self.known)}"
        )


def unknown_workflow_hint(name: str, known: Sequence[str]) -> str:
    """``; did you mean 'daily_sales'? (`orchestrator workflows` lists them)``."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    guess = f"; did you mean {match[0]!r}?" if match else ""
    if not known:
        return f"{guess} (no workflow is registered yet: `orchestrator run` or `dev` loads them)"
    return guess + " (`orchestrator workflows` lists the registered ones)"


class DuplicateRunError(OrchestratorError):
    """A run for this workflow and logical date exists already."""


class UnknownRunError(OrchestratorError):
    def __init__(self, run_id: int, hint: str = "") -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id}" + (f": {hint}" if hint else ""))


class IllegalTransitionError(OrchestratorError):
    """A guarded update found the row in a state other than the expected one."""

    def __init__(self, what: str, target: str, detail: str = "") -> None:
        self.what = what
        self.target = target
        super().__init__(f"{what}: not moved to {target!r}" + (f" ({detail})" if detail else ""))


class StoreError(OrchestratorError):
    """The database could not be reached or answered with an error."""


class TaskError(OrchestratorError):
    """Raised by handlers to fail an attempt with structured information."""

    def __init__(self, message: str, *, non_retryable: bool = False) -> None:
        self.non_retryable = non_retryable
        super().__init__(message)


class NonRetryableError(TaskError):
    """Fails the task at once, whatever its retry policy says."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


class OutputTooLargeError(TaskError):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"handler output is {size} bytes of JSON, over the limit of {limit} bytes "
            "(ORCHESTRATOR_MAX_OUTPUT_BYTES); store large data elsewhere and return a reference"
        )


class OutputNotJSONError(TaskError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"handler output is not JSON-serialisable: {detail}")


class ParamsError(OrchestratorError):
    """Run params a workflow does not accept; nothing was started with them."""

    def __init__(
        self,
        workflow: str,
        problems: Sequence[tuple[str, str]],
        declared: Sequence[str],
        described: str = "",
    ) -> None:
        self.workflow = workflow
        self.problems = list(problems)
        """``(param, what is wrong)``, e.g. ``("dat", "is not a declared param")``."""
        self.declared = list(declared)
        wrong = "; ".join(f"{param!r} {message}" for param, message in self.problems)
        super().__init__(
            f"params of workflow {workflow!r} refused: {wrong}. "
            f"Declared params: {described or ', '.join(self.declared)}"
        )


class UnknownTaskError(OrchestratorError):
    """A task id that the run's (or workflow's) pinned version does not have."""

    def __init__(self, task_id: str, where: str, known: Iterable[str] = ()) -> None:
        self.task_id = task_id
        self.known = sorted(known)
        listed = f" (its tasks: {', '.join(self.known)})" if self.known else ""
        super().__init__(f"{where} has no task {task_id!r}{listed}")


class OperationRefusedError(OrchestratorError):
    """An operator action that the current state of the run or task does not
    allow (clearing a running task, cancelling a finished run, ...); nothing
    was changed. The API answers 409."""

    def __init__(self, message: str, *, run_id: int | None = None, task_id: str | None = None):
        self.run_id = run_id
        self.task_id = task_id
        super().__init__(message)

"""What a handler receives about the attempt it runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.logs import task_logger


@dataclass(slots=True)
class TaskContext:
    """Passed as the first argument to every handler."""

    run_id: int
    task_id: str
    attempt: int
    """1 for the first attempt, 2 for the first retry, ..."""
    workflow: str
    params: dict[str, Any]
    """The run's params (workflow defaults overridden by the trigger's)."""
    upstream: dict[str, Any]
    """Outputs of the direct upstream tasks, by task id (None for a task with no output)."""
    logical_date: str | None = None
    resumed: Any = None
    """When this handler deferred earlier (``raise Defer(..., resume="handler")``):
    what ended the wait (an event, a callback body)."""
    clock: Clock = SYSTEM_CLOCK
    """The orchestrator's clock: read the time and wait through it
    (``ctx.clock.now()``, ``await ctx.clock.sleep(s)``), so tests can move time."""
    _logger: logging.LoggerAdapter[logging.Logger] | None = field(default=None, repr=False)

    @property
    def idempotency_key(self) -> str:
        """Identical for every attempt of this task in this run: use it to make
        side effects (payments, inserts, API calls) safe to repeat."""
        return f"{self.workflow}:{self.run_id}:{self.task_id}"

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry run_id, task_id and attempt."""
        if self._logger is None:
            self._logger = task_logger(self.run_id, self.task_id, self.attempt)
        return self._logger

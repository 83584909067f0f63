"""Attempt outcomes for tests that drive the engine's completions directly."""

from __future__ import annotations

from orchestrator.engine import Claimed, Outcome
from orchestrator.states import TaskState


def success(c: Claimed, owner: str = "w1", output: str = "{}") -> Outcome:
    """The claimed attempt ``c``, ended successfully under ``owner``'s lease."""
    return Outcome(
        id=c.id,
        run_id=c.run_id,
        task_id=c.task_id,
        attempt=c.attempt,
        owner=owner,
        target=TaskState.SUCCESS,
        output=output,
    )

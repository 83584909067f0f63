"""Pure retry decisions: what a failed attempt leads to, and how long to wait.

Randomness is injected (``rand``) so tests pin the jitter instead of sleeping
or sampling.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.backoff import capped_exponential
from orchestrator.errors import TaskError
from orchestrator.spec import RetryPolicy
from orchestrator.states import TaskState


def backoff_delay(
    policy: RetryPolicy, attempt: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` failed.

    Jitter spreads retries of tasks that failed together (e.g. a shared
    dependency went down) so they do not all come back at the same instant.
    """
    return capped_exponential(
        attempt,
        initial_s=policy.initial_delay_s,
        max_s=policy.max_delay_s,
        factor=policy.factor,
        jitter=policy.jitter,
        rand=rand,
    )


def is_non_retryable(policy: RetryPolicy, exc: BaseException) -> bool:
    """Whether ``exc`` should fail the task at once rather than be retried.

    Base classes count, so listing ``OSError`` also covers ``ConnectionError``;
    qualified names let a policy single out one of two same-named classes.
    """
    if isinstance(exc, TaskError) and exc.non_retryable:
        return True
    names = policy.non_retryable
    if not names:
        return False
    return any(
        cls.__name__ in names or f"{cls.__module__}.{cls.__qualname__}" in names
        for cls in type(exc).__mro__
    )


@dataclass(frozen=True, slots=True)
class RetryDecision:
    target: TaskState
    """UP_FOR_RETRY, FAILED or DEAD_LETTERED."""
    delay_s: float = 0.0
    """Seconds until the retry is due; 0 unless ``target`` is UP_FOR_RETRY."""


def decide_failure(
    policy: RetryPolicy,
    attempt: int,
    exc: BaseException | None,
    rand: Callable[[], float] = random.random,
) -> RetryDecision:
    """Where attempt number ``attempt`` (from 1) goes after failing with ``exc``.

    ``exc`` is None when the attempt was lost (its lease expired, e.g. the
    worker died): that says nothing about the task, so it is retried.
    """
    if attempt < 1:
        raise ValueError(f"attempt starts at 1, got {attempt}")
    if attempt >= policy.max_attempts or (exc is not None and is_non_retryable(policy, exc)):
        return RetryDecision(TaskState.DEAD_LETTERED if policy.dead_letter else TaskState.FAILED)
    return RetryDecision(TaskState.UP_FOR_RETRY, backoff_delay(policy, attempt, rand))

"""Retry and backoff decisions, with the randomness pinned."""

from __future__ import annotations

import pytest

from orchestrator.errors import NonRetryableError, OutputTooLargeError, TaskError
from orchestrator.retry import RetryDecision, backoff_delay, decide_failure, is_non_retryable
from orchestrator.spec import RetryPolicy
from orchestrator.states import TaskState, is_legal

S = TaskState


def mid() -> float:
    return 0.5  # 2*0.5-1 == 0: no jitter


class CustomError(Exception):
    pass


class SubCustomError(CustomError):
    pass


def test_delays_grow_geometrically_and_cap() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, factor=2.0, max_delay_s=10.0, jitter=0.0)
    got = [backoff_delay(policy, attempt) for attempt in range(1, 7)]
    assert got == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_factor_one_is_a_constant_delay() -> None:
    policy = RetryPolicy(initial_delay_s=3.0, factor=1.0, max_delay_s=3.0, jitter=0.5)
    assert {backoff_delay(policy, a, mid) for a in (1, 2, 50)} == {3.0}


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, factor=100.0, max_delay_s=60.0, jitter=0.0)
    assert backoff_delay(policy, 1000) == 60.0
    zero = RetryPolicy(initial_delay_s=0.0, factor=100.0, max_delay_s=60.0, jitter=0.0)
    assert backoff_delay(zero, 1000) == 0.0


@pytest.mark.parametrize(("r", "expected"), [(0.0, 7.5), (0.5, 10.0), (0.999999, 12.5)])
def test_jitter_spreads_within_bounds(r: float, expected: float) -> None:
    policy = RetryPolicy(initial_delay_s=10.0, max_delay_s=10.0, jitter=0.25)
    assert backoff_delay(policy, 1, lambda: r) == pytest.approx(expected, rel=1e-5)


def test_jitter_applies_after_the_cap() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, factor=10.0, max_delay_s=5.0, jitter=0.1)
    assert backoff_delay(policy, 4, lambda: 1.0) == pytest.approx(5.5)
    assert backoff_delay(policy, 4, lambda: 0.0) == pytest.approx(4.5)


def test_delay_is_never_negative() -> None:
    policy = RetryPolicy(initial_delay_s=1.0, jitter=1.0)
    assert backoff_delay(policy, 1, lambda: 0.0) == 0.0
    assert backoff_delay(policy, 1, lambda: -5.0) == 0.0  # a misbehaving rand


def test_default_rand_stays_within_jitter() -> None:
    policy = RetryPolicy(initial_delay_s=2.0, max_delay_s=2.0, jitter=0.1)
    assert all(1.8 <= backoff_delay(policy, 1) <= 2.2 for _ in range(200))


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_numbers_start_at_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        backoff_delay(RetryPolicy(), attempt)
    with pytest.raises(ValueError, match="starts at 1"):
        decide_failure(RetryPolicy(), attempt, None)


@pytest.mark.parametrize(
    ("names", "exc", "expected"),
    [
        ((), ValueError("x"), False),
        (("ValueError",), ValueError("x"), True),
        (("builtins.ValueError",), ValueError("x"), True),
        (("KeyError",), ValueError("x"), False),
        (("LookupError",), KeyError("x"), True),  # via a base class
        (("OSError",), ConnectionRefusedError(), True),
        (("CustomError",), SubCustomError(), True),
        ((f"{__name__}.CustomError",), SubCustomError(), True),
        ((f"{__name__}.SubCustomError",), CustomError(), False),  # not the other way round
        (("other.module.CustomError",), CustomError(), False),
    ],
)
def test_non_retryable_by_name(names: tuple[str, ...], exc: BaseException, expected: bool) -> None:
    assert is_non_retryable(RetryPolicy(non_retryable=names), exc) is expected


def test_non_retryable_by_qualified_name_of_nested_class() -> None:
    class Inner(Exception):
        pass

    qualified = f"{Inner.__module__}.{Inner.__qualname__}"
    assert "<locals>" in qualified
    assert is_non_retryable(RetryPolicy(non_retryable=(qualified,)), Inner())


def test_task_error_flag_overrides_the_policy() -> None:
    policy = RetryPolicy()
    assert is_non_retryable(policy, NonRetryableError("bad input"))
    assert is_non_retryable(policy, TaskError("bad input", non_retryable=True))
    assert not is_non_retryable(policy, TaskError("flaky"))
    assert not is_non_retryable(policy, OutputTooLargeError(10, 5))


def test_retryable_failure_goes_up_for_retry_with_backoff() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=2.0, factor=3.0, jitter=0.0)
    assert decide_failure(policy, 1, RuntimeError()) == RetryDecision(S.UP_FOR_RETRY, 2.0)
    assert decide_failure(policy, 2, RuntimeError()) == RetryDecision(S.UP_FOR_RETRY, 6.0)


def test_decide_failure_uses_the_injected_rand() -> None:
    policy = RetryPolicy(initial_delay_s=10.0, max_delay_s=10.0, jitter=0.5)
    assert decide_failure(policy, 1, RuntimeError(), lambda: 1.0).delay_s == pytest.approx(15.0)


@pytest.mark.parametrize(("dead_letter", "final"), [(False, S.FAILED), (True, S.DEAD_LETTERED)])
def test_exhausted_attempts_end_the_task(dead_letter: bool, final: TaskState) -> None:
    policy = RetryPolicy(max_attempts=3, dead_letter=dead_letter)
    assert decide_failure(policy, 3, RuntimeError()) == RetryDecision(final, 0.0)
    assert decide_failure(policy, 4, RuntimeError()) == RetryDecision(final, 0.0)
    assert decide_failure(policy, 3, None) == RetryDecision(final, 0.0)


def test_single_attempt_policy_never_retries() -> None:
    assert decide_failure(RetryPolicy(max_attempts=1), 1, None).target is S.FAILED


@pytest.mark.parametrize(("dead_letter", "final"), [(False, S.FAILED), (True, S.DEAD_LETTERED)])
def test_non_retryable_fails_at_once(dead_letter: bool, final: TaskState) -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable=("ValueError",), dead_letter=dead_letter)
    assert decide_failure(policy, 1, ValueError()) == RetryDecision(final, 0.0)
    assert decide_failure(policy, 1, NonRetryableError("no")) == RetryDecision(final, 0.0)
    assert decide_failure(policy, 1, RuntimeError()).target is S.UP_FOR_RETRY


def test_lost_attempt_is_retried() -> None:
    policy = RetryPolicy(max_attempts=2, non_retryable=("Exception",), jitter=0.0)
    assert decide_failure(policy, 1, None) == RetryDecision(S.UP_FOR_RETRY, 1.0)


def test_every_decision_is_a_legal_move_from_running() -> None:
    for dead_letter in (False, True):
        policy = RetryPolicy(max_attempts=2, dead_letter=dead_letter)
        for attempt in (1, 2):
            assert is_legal(S.RUNNING, decide_failure(policy, attempt, None).target)

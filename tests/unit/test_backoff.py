"""The one backoff formula: capped exponential growth, jitter pinned by a
seeded random, and a retry loop driven on the manual clock."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.backoff import Backoff, capped_exponential
from orchestrator.clock import ManualClock
from orchestrator.polls import next_delay
from orchestrator.retry import backoff_delay
from orchestrator.spec import RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_grows_by_the_factor_up_to_the_cap() -> None:
    got = [capped_exponential(n, initial_s=0.5, max_s=3.0) for n in range(1, 6)]
    assert got == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_huge_attempt_number_is_the_cap_not_an_overflow() -> None:
    assert capped_exponential(100_000, initial_s=1.0, max_s=60.0) == 60.0
    assert capped_exponential(100_000, initial_s=0.0, max_s=60.0) == 0.0
    assert capped_exponential(100_000, initial_s=0.0, max_s=math.inf) == 0.0


def test_jitter_stays_within_its_fraction_and_is_reproducible() -> None:
    first = [
        capped_exponential(3, initial_s=1.0, max_s=10.0, jitter=0.2, rand=r)
        for r in [random.Random(7).random] * 50
    ]
    again = [
        capped_exponential(3, initial_s=1.0, max_s=10.0, jitter=0.2, rand=r)
        for r in [random.Random(7).random] * 50
    ]
    assert first == again
    assert all(3.2 <= d <= 4.8 for d in first)
    assert len(set(first)) > 1


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt starts at 1"):
        capped_exponential(0, initial_s=1.0, max_s=2.0)


def test_a_loop_backoff_resets_after_a_success() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0.0)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.next() == 0.1


def test_a_loop_backoff_rejects_impossible_bounds() -> None:
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(2.0, 1.0)


def test_retry_policy_and_poll_sensor_use_the_same_formula() -> None:
    rand = random.Random(3).random
    policy = RetryPolicy(initial_delay_s=2.0, factor=3.0, max_delay_s=50.0, jitter=0.3)
    same = random.Random(3).random
    for attempt in range(1, 6):
        assert backoff_delay(policy, attempt, rand) == capped_exponential(
            attempt, initial_s=2.0, factor=3.0, max_s=50.0, jitter=0.3, rand=same
        )
    config = {"interval_s": 5.0, "backoff": 2.0, "max_interval_s": 30.0, "jitter": 0.0}
    assert [next_delay(config, n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]


async def test_a_retry_loop_on_the_manual_clock_waits_exactly_its_delays() -> None:
    """What every reconnect loop does, driven by moving time instead of waiting."""
    clock = ManualClock(T0)
    backoff = Backoff(1.0, 4.0, jitter=0.0)
    tries: list[datetime] = []

    async def flaky() -> None:
        while True:
            tries.append(clock.now())
            if len(tries) == 4:
                return
            await clock.sleep(backoff.next())

    loop = asyncio.create_task(flaky())
    for step in (1, 2, 4):
        await asyncio.wait_for(clock.wait_for_sleepers(), 5)
        assert not loop.done()
        await clock.advance(timedelta(seconds=step))
    await asyncio.wait_for(loop, 5)
    assert [(t - T0).total_seconds() for t in tries] == [0, 1, 3, 7]

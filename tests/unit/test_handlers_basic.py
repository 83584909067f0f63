"""Built-in handlers without side effects, and the built-in registry."""

from __future__ import annotations

import asyncio

import pytest

import handlers
from handlers import basic
from orchestrator.context import TaskContext
from orchestrator.errors import NonRetryableError, TaskError


def make_ctx(attempt: int = 1) -> TaskContext:
    return TaskContext(run_id=1, task_id="t", attempt=attempt, workflow="w", params={}, upstream={})


def test_builtin_registry_holds_every_builtin() -> None:
    registry = handlers.builtin_registry()
    assert registry.names() == [
        "echo",
        "fail",
        "http.request",
        "noop",
        "sensor.callback",
        "sensor.file",
        "sensor.kafka",
        "sensor.poll",
        "sensor.run",
        "sensor.time",
        "shell",
        "sleep",
    ]
    assert all(registry.is_async(name) for name in registry.names())
    assert registry.get("noop") is basic.noop


def test_builtin_registry_is_fresh_each_call() -> None:
    first = handlers.builtin_registry()
    first.register("mine", basic.noop)
    assert "mine" not in handlers.builtin_registry()


async def test_noop_returns_none_and_ignores_inputs() -> None:
    noop = handlers.builtin_registry().get("noop")  # called the way a worker calls it
    assert await noop(make_ctx()) is None
    assert await noop(make_ctx(), anything=1) is None


async def test_echo_returns_inputs() -> None:
    assert await basic.echo(make_ctx()) == {}
    assert await basic.echo(make_ctx(), a=1, b={"c": [1, 2]}) == {"a": 1, "b": {"c": [1, 2]}}


async def test_fail_raises_retryable_by_default() -> None:
    with pytest.raises(TaskError) as info:
        await basic.fail(make_ctx())
    assert str(info.value) == "failed on purpose"
    assert info.value.non_retryable is False


async def test_fail_with_message_and_non_retryable() -> None:
    with pytest.raises(TaskError) as info:
        await basic.fail(make_ctx(), message="boom", non_retryable=True)
    assert str(info.value) == "boom"
    assert info.value.non_retryable is True


async def test_fail_succeeds_from_the_given_attempt() -> None:
    with pytest.raises(TaskError):
        await basic.fail(make_ctx(attempt=2), succeed_on_attempt=3)
    assert await basic.fail(make_ctx(attempt=3), succeed_on_attempt=3) == {"attempt": 3}
    assert await basic.fail(make_ctx(attempt=4), succeed_on_attempt=3) == {"attempt": 4}


async def test_fail_rejects_a_non_integer_attempt() -> None:
    with pytest.raises(NonRetryableError, match="succeed_on_attempt"):
        await basic.fail(make_ctx(), succeed_on_attempt="3")  # type: ignore[arg-type]


async def test_sleep_zero_returns_none() -> None:
    sleep = handlers.builtin_registry().get("sleep")
    assert await sleep(make_ctx(), seconds=0) is None


async def test_sleep_is_cancellable_so_task_timeouts_work() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await basic.sleep(make_ctx(), seconds=30)


@pytest.mark.parametrize("seconds", [-1, float("nan"), "1", True])
async def test_sleep_rejects_bad_seconds(seconds: object) -> None:
    with pytest.raises(NonRetryableError, match="seconds"):
        await basic.sleep(make_ctx(), seconds=seconds)  # type: ignore[arg-type]

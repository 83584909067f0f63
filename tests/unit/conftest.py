"""Fixtures of the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.registry import HandlerRegistry


async def _dummy(ctx: Any, **inputs: Any) -> Any:
    return inputs


@pytest.fixture
def base() -> HandlerRegistry:
    reg = HandlerRegistry()
    for name in (
        "noop",
        "echo",
        "fail",
        "shell",
        "http.request",
        "sensor.kafka",
        "sensor.file",
        "sensor.callback",
        "sensor.run",
        "sensor.time",
        "sensor.poll",
    ):
        reg.register(name, _dummy, origin="builtin")
    return reg

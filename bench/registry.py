"""Scenarios register here; ``python -m bench`` imports every scenario module."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.harness import Figure

#: (server URL, parsed CLI args, baseline tx/s measured in this run) -> figures
Runner = Callable[[str, argparse.Namespace, float], Awaitable[list[Figure]]]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    run: Runner


SCENARIOS: dict[str, Scenario] = {}
#: Extra command-line options a scenario module adds: (flags, argparse kwargs).
OPTIONS: list[tuple[tuple[str, ...], dict[str, object]]] = []


def scenario(name: str, description: str) -> Callable[[Runner], Runner]:
    def add(fn: Runner) -> Runner:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, description, fn)
        return fn

    return add


def option(*flags: str, **kwargs: object) -> None:
    OPTIONS.append((flags, kwargs))

"""Shared helpers of the loader tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from orchestrator.loader import LoadResult

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def modules_from(path: Path) -> list[str]:
    """Names in sys.modules of modules imported from ``path``."""
    target = str(path.resolve())
    return [n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None) == target]


def messages(result: LoadResult) -> list[str]:
    return [str(e) for e in result.errors]


SIMPLE_YAML = """
name: simple
params: {date: "2026-01-01"}
tasks:
  - id: a
    handler: echo
    inputs: {d: "{{ params.date }}"}
  - id: b
    handler: noop
    upstream: [a]
"""

PY_HEADER = """
from orchestrator.registry import handler
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
"""


def py(body: str) -> str:
    return PY_HEADER + textwrap.dedent(body)


def handler_file(name: str, body: str = "pass") -> str:
    """A Python file defining one sync handler called ``name``."""
    header = "from orchestrator.registry import handler\n\n"
    return f"{header}@handler({name!r})\ndef f(ctx):\n    {body}\n"

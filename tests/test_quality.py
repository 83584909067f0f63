"""Lint and strict typing are part of the suite, so CI enforces them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    # The interpreter's own copy, never another one found on PATH: the pinned
    # version is the one that judges.
    cmd = [sys.executable, "-m", name, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)


def _pins() -> dict[str, str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    pins = {}
    for requirement in extra:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement)
        if match:
            pins[match[1]] = match[2]
    return pins


def test_tools_with_changing_verdicts_are_pinned_and_installed_as_pinned() -> None:
    pins = _pins()
    assert {"ruff", "mypy"} <= pins.keys(), f"ruff and mypy must be pinned exactly: {pins}"
    for name, pinned in pins.items():
        assert version(name) == pinned, (
            f"{name} {version(name)} is installed but the test extra pins {pinned}: "
            "run pip install -e '.[test]'"
        )


@pytest.mark.timeout(300)
def test_ruff_is_clean() -> None:
    lint = _tool("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _tool("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    result = _tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


NESTED_CONFTESTS = sorted(p.relative_to(ROOT) for p in (ROOT / "tests").glob("*/**/conftest.py"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("conftest", NESTED_CONFTESTS, ids=str)
def test_mypy_strict_is_clean_on_each_nested_conftest(conftest: Path) -> None:
    # Every conftest is the module ``conftest`` to mypy, as to pytest, so one run
    # cannot hold them all: the plain run leaves the nested ones out (see
    # [tool.mypy] exclude) and each is checked on its own here.
    result = _tool("mypy", str(conftest))
    assert result.returncode == 0, result.stdout + result.stderr

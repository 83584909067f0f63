"""Every exception the project defines belongs to the one tree under OrchestratorError,
so a caller can catch "anything the orchestrator raised on purpose" with one clause."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "handlers", "sources")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if not info.name.endswith(".__main__"):  # importing it runs the CLI
                names.append(info.name)
    return sorted(names)


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] in PACKAGES
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


def test_the_packages_define_exceptions_at_all() -> None:
    names = {cls.__name__ for cls in _exception_classes()}
    assert {"SpecError", "TaskError", "HTTPRequestError", "SecretFormatError"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda c: c.__qualname__)
def test_every_exception_is_in_the_tree(cls: type[BaseException]) -> None:
    assert issubclass(cls, OrchestratorError), (
        f"{cls.__module__}.{cls.__qualname__} does not derive from OrchestratorError"
    )

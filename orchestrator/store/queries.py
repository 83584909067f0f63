"""Named SQL: every ``.sql`` file under ``store/sql`` holds ``-- name: X`` blocks
(and so does each source plugin's ``sql`` folder: :func:`named_queries`).

Code reads a query as ``SQL.X``. Every name is declared as a typed attribute of
:class:`~orchestrator.store.query_names.NamedQueries` (generated from the
``.sql`` files), so a misspelled name fails the type check, not a run.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, TypeVar, cast

from orchestrator.store.query_names import NamedQueries

Q = TypeVar("Q")

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse_named(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} is defined twice")
        out[name] = body.strip()
    return out


@cache
def queries() -> dict[str, str]:
    return named_queries("orchestrator.store")


@cache
def named_queries(package: str) -> dict[str, str]:
    """The named queries of ``package/sql/*.sql`` (a source plugin's ``store``)."""
    found: dict[str, str] = {}
    for entry in sorted(resources.files(package).joinpath("sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse_named(entry.read_text("utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined in two files")
                found[name] = sql
    return found


class _Loader:
    """Reads a package's ``.sql`` files on the first use of any query, then
    keeps each text as a plain attribute."""

    def __init__(self, package: str) -> None:
        self._package = package

    # Hidden from the type checker: with a visible __getattr__ any name would
    # pass. Callers see the loader through the package's generated names class.
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> str:
            try:
                text = named_queries(self._package)[name]
            except KeyError:
                raise AttributeError(f"no named query {name!r} in {self._package}") from None
            setattr(self, name, text)
            return text


def typed_queries(package: str, names: type[Q]) -> Q:
    """``package``'s named queries seen through ``names``, its generated class
    of typed query names (see ``tests/unit/test_named_queries.py``)."""
    return cast(Q, _Loader(package))


SQL = typed_queries("orchestrator.store", NamedQueries)

"""What every CLI command needs, the core's and those source plugins add:
settings, a clean error exit, an event loop and a database connection."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import asyncpg
import click

from orchestrator import logs
from orchestrator.errors import OrchestratorError
from orchestrator.settings import Settings, load_settings
from orchestrator.store import Database, connect

if TYPE_CHECKING:
    from orchestrator.engine import Engine

T = TypeVar("T")


def cli_settings() -> Settings:
    """The settings, with logging configured; a bad one exits with its message."""
    try:
        settings = load_settings()
    except OrchestratorError as exc:
        fail(str(exc))
    logs.configure(settings.log_level, settings.log_format)
    return settings


def fail(message: str, code: int = 2) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def run_async(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` to its end; an :class:`OrchestratorError` exits with its message."""
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except OrchestratorError as exc:
        fail(str(exc))
    except asyncpg.UndefinedTableError as exc:
        fail(
            f"the database has not been migrated ({exc}): run `orchestrator migrate`, "
            "or wait for `orchestrator dev`/`run` to finish starting"
        )


async def open_database(settings: Settings) -> Database:
    from orchestrator.devmode import resolve_database_url

    return await connect(resolve_database_url(settings), size=2, min_size=1)


def with_database(work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` against the configured database, closing it after."""
    settings = cli_settings()

    async def go() -> T:
        db = await open_database(settings)
        try:
            return await work(db)
        finally:
            await db.close()

    return run_async(go)


def with_engine(work: Callable[[Engine], Awaitable[T]]) -> T:
    """:func:`with_database`, with an engine over it."""
    from orchestrator.engine import Engine  # loaded only by a command that runs

    lease_s = cli_settings().lease_s
    return with_database(lambda db: work(Engine(db, lease_s=lease_s)))


def cli_actor() -> str:
    """Who a command acts as, in transitions and the audit log: ``cli:<OS user>``."""
    import getpass

    return f"cli:{getpass.getuser()}"


def echo_json(data: object) -> None:
    """``--json`` output: the same shapes as the API's answers (see its
    OpenAPI document), times in ISO 8601."""
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())


def echo_page(items: list[Any], *, next_before: int | None = None) -> None:
    """A ``--json`` list in the API's list envelope, ``{"items": [...],
    "next": ...}``; ``next`` is the option that reads the next page
    (``--before ID``), or null on the last page."""
    echo_json({"items": items, "next": None if next_before is None else f"--before {next_before}"})

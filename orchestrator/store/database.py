"""The connection pool and the boundary where driver errors become ours."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import asyncpg

from orchestrator.errors import StoreError
from orchestrator.store.listener import Listener
from orchestrator.store.migrate import migrate

#: Errors meaning "the database cannot be used right now": callers answer 503
#: (HTTP) or keep the work and retry (Kafka), rather than fail it.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    StoreError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # 08: connection lost or refused
    asyncpg.OperatorInterventionError,  # 57: admin shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.ObjectNotInPrerequisiteStateError,  # 55: database not accepting connections
    asyncpg.TransactionRollbackError,  # 40: serialization failure, deadlock
)


#: Every session of the engine's pools. No JIT: the engine's statements touch
#: a few thousand rows at most, which compiled code never pays back, and the
#: server compiles whenever an estimate runs high -- as it does for a table
#: short of statistics after a burst of runs or waits -- for 0.2-0.5 s per
#: execution of a statement that then runs in milliseconds.
SESSION_DEFAULTS: dict[str, str] = {"jit": "off"}


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


def database_name(url: str) -> str:
    """The database a URL names: its path, never a socket directory in the query."""
    return unquote(urlsplit(url).path.lstrip("/"))


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` instead (query string kept)."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def create_database(
    admin_url: str, name: str, *, template: str | None = None, exist_ok: bool = False
) -> str:
    """Create database ``name`` on the server of ``admin_url``; returns its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not (exists and exist_ok):
            clause = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Database:
    url: str
    pool: asyncpg.Pool
    _listener: Listener | None = field(default=None, init=False, repr=False)
    _commit_hooks: list[Callable[[], None]] = field(default_factory=list, init=False, repr=False)

    @property
    def listener(self) -> Listener:
        """The process's one LISTEN connection, shared by every subscriber."""
        if self._listener is None:
            self._listener = Listener(self.url)
        return self._listener

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn
        self.committed()

    def on_commit(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` after each commit this process makes; returns its remover.

        In-process only and sent to nobody else: a NOTIFY per commit would take
        PostgreSQL's commit lock every time. Hooks must be cheap and must not
        raise (a live view sets a flag and reads later)."""
        self._commit_hooks.append(hook)
        return lambda: self._commit_hooks.remove(hook) if hook in self._commit_hooks else None

    def committed(self) -> None:
        """Tell the commit hooks that something was committed."""
        for hook in self._commit_hooks:
            hook()

    async def migrate(self) -> list[str]:
        async with self.pool.acquire() as conn:
            return await migrate(conn)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await self.pool.close()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pooled sessions carry no state of their own (LISTEN and session locks
    live on dedicated connections; settings are per transaction), so a released
    connection skips asyncpg's reset query: one round trip less per use.
    asyncpg still rolls back a transaction left open."""


async def connect(
    url: str,
    *,
    size: int = 8,
    min_size: int | None = None,
    server_settings: dict[str, str] | None = None,
) -> Database:
    """A pool on ``url``; ``server_settings`` are set on each of its sessions
    (over :data:`SESSION_DEFAULTS`)."""
    server_settings = {**SESSION_DEFAULTS, **(server_settings or {})}
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size if min_size is not None else min(2, size),
            max_size=size,
            # Statements are prepared once per connection and reused: the
            # engine runs the same few queries thousands of times a second.
            statement_cache_size=256,
            command_timeout=60,
            server_settings=server_settings,
            reset=_keep_session,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
    assert pool is not None
    return Database(url=url, pool=pool)

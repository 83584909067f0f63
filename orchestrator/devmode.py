"""Running an orchestrator process: ``dev`` (embedded database, reload) and ``run``.

Both load workflows and handlers from a path, register them, and run the
engine and a worker until SIGINT/SIGTERM, then stop cleanly: running attempts
get a grace period, every outcome is committed, and only then do the
embedded servers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import click

from orchestrator.app import Orchestrator
from orchestrator.embedded import EmbeddedPostgres
from orchestrator.errors import ConfigError
from orchestrator.gc_tuning import tune_gc
from orchestrator.loader import LoadResult, format_errors, load_path
from orchestrator.plugins import DevPreparation, create_sources, handler_registry, prepare_dev
from orchestrator.registry import HandlerRegistry
from orchestrator.settings import Settings
from orchestrator.spec import WorkflowSpec
from orchestrator.store import create_database

log = logging.getLogger(__name__)

DEV_STATE_FILE = "dev.json"


def dev_state_path(settings: Settings) -> Path:
    return settings.data_dir / DEV_STATE_FILE


def _dev_state(settings: Settings) -> dict[str, object]:
    """What a running ``orchestrator dev`` in this directory recorded, if alive."""
    path = dev_state_path(settings)
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return state if isinstance(state, dict) else {}


def discover_dev_url(settings: Settings) -> str | None:
    """The database URL of an ``orchestrator dev`` running from this directory."""
    url = _dev_state(settings).get("database_url")
    return url if isinstance(url, str) else None


def resolve_kafka_settings(settings: Settings) -> Settings:
    """Settings with Kafka: configured, or the embedded broker of a running dev."""
    if settings.kafka_bootstrap:
        return settings
    bootstrap = _dev_state(settings).get("kafka_bootstrap")
    if not isinstance(bootstrap, str):
        raise ConfigError(
            "no Kafka: set ORCHESTRATOR_KAFKA_BOOTSTRAP, or start `orchestrator dev` in this "
            "directory (it runs an embedded broker)"
        )
    return settings.model_copy(
        update={"kafka_bootstrap": bootstrap, "kafka_idempotent_producer": False}
    )


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    found = discover_dev_url(settings)
    if found:
        return found
    raise ConfigError(
        "no database: set ORCHESTRATOR_DATABASE_URL, or start `orchestrator dev` in this "
        f"directory (it keeps its database under {settings.data_dir}/)"
    )


def load_workflows(path: Path) -> LoadResult:
    if not path.exists():
        raise ConfigError(f"workflows path {path} does not exist")
    return load_path(path, base=handler_registry())


#: How a terminal (Ctrl-C) and a supervisor ask a process to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` instead of ending the process."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


class Reloader:
    """Keeps the last good version of every file's workflows and handlers."""

    def __init__(self, orch: Orchestrator, path: Path, first: LoadResult) -> None:
        self.orch = orch
        self.path = path
        self.registry: HandlerRegistry = first.handlers
        self.workflows: dict[str, WorkflowSpec] = dict(first.workflows)

    async def reload(self) -> None:
        result = await asyncio.to_thread(load_workflows, self.path)
        if result.errors:
            click.secho(
                "reload: these files have errors; their previous versions stay active:\n"
                + format_errors(result.errors),
                fg="red",
                err=True,
            )
        changed = [
            spec
            for name, spec in result.workflows.items()
            if name not in self.workflows or self.workflows[name].version != spec.version
        ]
        self.registry = self.registry.merged(result.handlers)
        self.orch.use_handlers(self.registry)
        if changed:
            versions = await self.orch.register(changed)
            self.workflows.update({s.name: s for s in changed})
            for name, version in sorted(versions.items()):
                click.echo(f"reload: {name} is now version {version}; runs in flight keep theirs")

    async def watch(self) -> None:
        from watchfiles import awatch

        async for _changes in awatch(self.path, debounce=300, step=50):
            try:
                await self.reload()
            except Exception:
                log.exception("reload failed; the previous versions stay active")


async def serve(
    settings: Settings,
    database_url: str,
    path: Path,
    *,
    reload: bool,
    banner: str = "",
    stop: asyncio.Event | None = None,
    webhook_processes: int = 1,
) -> None:
    """Run the engine, a worker, and every event source the settings' roles
    enable (found through entry points) until SIGINT/SIGTERM, or until
    ``stop`` is set when the caller handles the signals itself.
    ``webhook_processes``: processes serving the HTTP port, this one included."""
    # Signals are this function's to handle only when the caller gave no ``stop``.
    own_signals = stop is None
    stop = asyncio.Event() if stop is None else stop
    with stop_on_signals(stop) if own_signals else contextlib.nullcontext():
        await _serve(
            settings,
            database_url,
            path,
            reload=reload,
            banner=banner,
            stop=stop,
            webhook_processes=webhook_processes,
        )


async def _serve(
    settings: Settings,
    database_url: str,
    path: Path,
    *,
    reload: bool,
    banner: str,
    stop: asyncio.Event,
    webhook_processes: int,
) -> None:
    first = await asyncio.to_thread(load_workflows, path)
    if first.errors:
        click.secho(format_errors(first.errors), fg="red", err=True)
        if not reload:
            raise ConfigError(f"{len(first.errors)} error(s) in {path}; nothing was started")
    orch = Orchestrator(
        settings,
        database_url,
        registry=first.handlers,
        workflows=first.workflows.values(),
        sources=create_sources(settings),
        http=settings.has_role("api"),
        prune=True,
        webhook_processes=webhook_processes,
    )
    # A signal during start() is acted on once it returns.
    await orch.start()
    watcher: asyncio.Task[None] | None = None
    try:
        for name, spec in sorted(first.workflows.items()):
            click.echo(f"workflow {name} (version {spec.version}, {len(spec.tasks)} tasks)")
        if reload:
            watcher = asyncio.create_task(Reloader(orch, path, first).watch())
        if orch.http is not None:
            served = f"http://{orch.http.host}:{orch.http.port}"
            if orch.http_processes is not None:
                served += f" ({orch.http_processes.count + 1} processes)"
            click.echo(f"HTTP API and webhooks on {served}")
        if banner and not stop.is_set():
            click.echo(banner)
        await stop.wait()
        click.echo("stopping: letting running attempts finish ...", err=True)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await orch.stop()


def run_dev(settings: Settings, path: Path) -> None:
    """``orchestrator dev``: everything in one process, zero setup."""
    if "access_log" not in settings.model_fields_set:
        settings = settings.model_copy(update={"access_log": False})  # a quieter terminal
    _run_loop(_dev_main(settings, path))


async def _dev_main(settings: Settings, path: Path) -> None:
    """Start the embedded services, serve, and on every way out stop all that
    was started, in reverse order: the embedded servers only once the
    orchestrator has recorded its work.

    SIGINT and SIGTERM are handled from the first moment. Arriving during
    start-up, they end it after the step in progress, so no server is left
    half-started; the servers run in sessions of their own, so a terminal's
    Ctrl-C reaches only this process, which stops them in order.
    """
    stop = asyncio.Event()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with stop_on_signals(stop):
        async with contextlib.AsyncExitStack() as started:
            url = await _start_database(settings, started)
            if stop.is_set():
                click.echo("stopping ...", err=True)
                return
            settings, preparations = await prepare_dev(settings)
            for prep in preparations:
                if prep.cleanup is not None:
                    started.push_async_callback(_quietly, prep.cleanup)
            if stop.is_set():
                click.echo("stopping ...", err=True)
                return
            state_file = dev_state_path(settings)
            state = {
                "pid": os.getpid(),
                "database_url": url,
                "kafka_bootstrap": settings.kafka_bootstrap,
            }
            state_file.write_text(json.dumps(state))
            started.callback(state_file.unlink, missing_ok=True)
            banner = _dev_banner(path, preparations, settings)
            await serve(settings, url, path, reload=True, banner=banner, stop=stop)


async def _start_database(settings: Settings, started: contextlib.AsyncExitStack) -> str:
    """The configured database, or the embedded server's (stopped by ``started``)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server = EmbeddedPostgres(settings.data_dir / "pg")
    click.echo(f"starting embedded PostgreSQL in {server.data_dir} ...")
    # Pushed before starting: stop() also ends a server that failed half-way.
    started.push_async_callback(_stop_database, server)
    admin_url = await asyncio.to_thread(server.start)
    return await create_database(admin_url, "orchestrator", exist_ok=True)


async def _stop_database(server: EmbeddedPostgres) -> None:
    was_running = server.running
    await asyncio.to_thread(server.stop)
    if was_running:
        click.echo("embedded PostgreSQL stopped", err=True)


async def _quietly(cleanup: Callable[[], Awaitable[None]]) -> None:
    try:
        await cleanup()
    except Exception:
        log.exception("a dev-mode service did not stop cleanly")


def _dev_banner(path: Path, preparations: list[DevPreparation], settings: Settings) -> str:
    from orchestrator.auth import tokens_required

    where = f"http://{settings.http_host}:{settings.http_port}/api/v1"
    if tokens_required(settings.api_auth, settings.http_host):
        api = f"The API at {where} needs a token: orchestrator tokens create NAME --role operator"
    else:
        api = (
            f"The API at {where} is open to anyone who reaches {settings.http_host} "
            "(ORCHESTRATOR_API_AUTH=tokens requires tokens)."
        )
    ui = f"http://{settings.http_host}:{settings.http_port}/"
    lines = [
        "",
        f"orchestrator dev is running; the UI is at {ui} Ctrl-C stops it.",
        "In another terminal:",
        "  orchestrator trigger daily_sales --param date=2026-02-01 --wait",
        "  orchestrator runs",
        "  orchestrator show RUN_ID",
        api,
    ]
    for prep in preparations:
        lines += prep.banner
    lines.append(f"Edit files under {path}/ and they are reloaded.")
    return "\n".join(lines) + "\n"


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed: a faster loop for the hot path;
    with the garbage collector sized for it (:mod:`orchestrator.gc_tuning`)."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)

"""One orchestrator process: database, engine, workers and the loaded workflows.

Used as an async context manager by ``orchestrator run`` and ``dev``, by the
tests and by the benchmarks, so all of them exercise the same wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType

from orchestrator.alert_relay import AlertRelay, RelaySettings
from orchestrator.api import build_app
from orchestrator.auth import Authenticator, tokens_required
from orchestrator.clock import Clock, SystemClock
from orchestrator.engine import Engine
from orchestrator.freshness import FreshnessWatch
from orchestrator.health import Liveness, Readiness
from orchestrator.http_processes import HttpProcesses, Launch
from orchestrator.http_server import HttpServer, PortSharing
from orchestrator.intake import Intake, Router
from orchestrator.metrics import metrics_app, watch_loop_lag
from orchestrator.notices import TASKS_CHANNEL
from orchestrator.registry import HandlerRegistry
from orchestrator.retention import prune_periodically
from orchestrator.secrets import Secrets
from orchestrator.settings import Settings
from orchestrator.sources import Source, SourceContext
from orchestrator.spec import WorkflowSpec
from orchestrator.store import Database, connect
from orchestrator.store.listener import Subscription
from orchestrator.triggerer import Triggerer
from orchestrator.worker import FaultHook, Worker

log = logging.getLogger(__name__)


async def _shutdown_step(what: str, step: Awaitable[None]) -> None:
    """One step of stopping. A failure is logged and the next steps still run:
    a source that cannot stop cleanly must not keep finished attempts from
    being recorded."""
    try:
        await step
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # this stop() itself is being cancelled
        # Not ours: a library re-raised the cancellation of one of its own
        # tasks (aiokafka's consumer does when its broker is already gone).
        log.warning("%s did not stop cleanly: one of its tasks was cancelled", what)
    except Exception:
        log.exception("%s did not stop cleanly", what)


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        *,
        registry: HandlerRegistry | None = None,
        workflows: Iterable[WorkflowSpec] = (),
        migrate: bool = True,
        worker_name: str | None = None,
        fault: FaultHook | None = None,
        sources: Sequence[Source] = (),
        http: bool = False,
        clock: Clock | None = None,
        prune: bool = False,
        webhook_processes: int = 1,
        register: bool = True,
        share_port: PortSharing = "no",
    ) -> None:
        """``webhook_processes``: processes serving the HTTP port, this one
        included (see :mod:`orchestrator.http_processes`). ``register=False``:
        ``workflows`` are registered already (by the orchestrator that started
        this process); only route events by them. ``share_port``: how the
        HTTP server binds its port (``"join"``: beside the orchestrator that
        started this process)."""
        if webhook_processes < 1:
            raise ValueError("webhook_processes must be at least 1")
        self.settings = settings
        self.sources = list(sources)
        self._serve_http = http
        self._webhook_processes = webhook_processes
        self._register = register
        self._share_port: PortSharing = "first" if webhook_processes > 1 else share_port
        self.http_processes: HttpProcesses | None = None
        """The other processes serving the HTTP port, when there are."""
        self.clock: Clock = clock or SystemClock()
        self.workflows: dict[str, WorkflowSpec] = {}
        self._prune = prune
        self._pruner: asyncio.Task[None] | None = None
        self.intake: Intake | None = None
        self.http: HttpServer | None = None
        self.metrics_http: HttpServer | None = None
        self.liveness = Liveness(settings.health_stale_s)
        self.readiness: Readiness | None = None
        self._loop_lag: asyncio.Task[None] | None = None
        self.database_url = database_url
        self.registry = registry or HandlerRegistry()
        self._initial_workflows = list(workflows)
        self._migrate = migrate
        self._worker_name = worker_name
        self._fault = fault
        self.db: Database | None = None
        self.engine: Engine | None = None
        self.worker: Worker | None = None
        self._wakeups: Subscription | None = None
        self._started_sources: list[Source] = []
        self.triggerer: Triggerer | None = None
        self.relay: AlertRelay | None = None
        self.freshness: FreshnessWatch | None = None

    async def start(self) -> None:
        s = self.settings
        self.db = await connect(self.database_url, size=s.db_pool_size)
        self.readiness = Readiness(self.db, self.sources)
        try:
            if self._migrate:
                applied = await self.db.migrate()
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
            self.engine = Engine(
                self.db,
                lease_s=s.lease_s,
                default_pool_slots=s.default_pool_slots,
                clock=self.clock,
                alert_rules=s.alert_rules,
            )
            for name, slots in s.pools.items():
                await self.engine.set_pool(
                    name, slots, actor="config", reason="ORCHESTRATOR_POOLS at start"
                )
            self.intake = Intake(self.engine)
            if self._initial_workflows and self._register:
                await self.register(self._initial_workflows)
            elif self._initial_workflows:
                self.route(self._initial_workflows)
            app = None
            if self._serve_http:
                required = tokens_required(s.api_auth, s.http_host)
                if not required and self._share_port != "join":  # said once, by the first
                    log.warning(
                        "the API is open to any caller that reaches %s "
                        "(ORCHESTRATOR_API_AUTH=%s); tokens are still checked when sent",
                        s.http_host,
                        s.api_auth,
                    )
                app = build_app(
                    self.engine,
                    self.intake,
                    authenticator=Authenticator(
                        self.db, self.clock, cache_s=s.api_token_cache_s, required=required
                    ),
                    max_body_bytes=s.max_payload_bytes,
                    read_timeout_s=s.http_read_timeout_s,
                    batch_delay_s=s.intake_batch_delay_s,
                    liveness=self.liveness,
                    readiness=self.readiness,
                    access_log=s.access_log,
                    cors_origins=s.cors_origin_list,
                )
            ctx = SourceContext(s, self.engine, self.intake, self.clock, app, self.liveness)
            for source in self.sources:
                source.setup(ctx)
                source.use_router(self.intake.router)
            if app is not None:
                self.http = HttpServer(
                    app,
                    s.http_host,
                    s.http_port,
                    read_timeout_s=s.http_read_timeout_s,
                    max_connections=s.http_max_connections,
                    sharing=self._share_port,
                )
                await self.http.start()
            if s.metrics_port is not None:
                self.metrics_http = HttpServer(
                    metrics_app(self.db, self.liveness, self.readiness),
                    s.http_host,
                    s.metrics_port,
                    read_timeout_s=10.0,
                )
                await self.metrics_http.start()
            self._loop_lag = asyncio.create_task(watch_loop_lag(), name="orchestrator-loop-lag")
            for source in self.sources:
                await source.start()
                self._started_sources.append(source)
            if self.http is not None and self._webhook_processes > 1:
                self.http_processes = self._more_http_processes(self.http.port)
                await self.http_processes.start()
            if self._prune:
                self._pruner = asyncio.create_task(
                    prune_periodically(
                        self.db,
                        self.clock,
                        retention=timedelta(days=s.retention_days),
                        interval_s=s.prune_interval_s,
                        batch=s.prune_batch,
                        keep_unpublished=s.lifecycle_topic is not None,
                    ),
                    name="orchestrator-retention",
                )
            if s.has_role("scheduler"):
                self.freshness = FreshnessWatch(
                    self.engine, self.clock, interval_s=s.dataset_freshness_check_s
                )
                self.freshness.start()
            if s.has_role("triggerer"):
                self.triggerer = Triggerer(
                    self.engine, self.clock, poll_s=s.poll_interval_s, registry=self.registry
                )
                self.triggerer.liveness = self.liveness
                self.triggerer.start()
            if s.worker_slots > 0 and s.has_role("worker"):
                self.worker = Worker(
                    self.engine,
                    self.registry,
                    s,
                    name=self._worker_name,
                    fault=self._fault,
                    clock=self.clock,
                )
                self.worker.liveness = self.liveness
                self._wakeups = self.db.listener.subscribe(TASKS_CHANNEL, self.worker.wake)
                self.worker.start()
                if s.alert_relay:
                    # Where transitions are committed, alerts are delivered.
                    self.relay = AlertRelay(
                        self.db,
                        self.clock,
                        Secrets.from_settings(s),
                        settings=RelaySettings(
                            max_attempts=s.alert_max_attempts,
                            retry_initial_s=s.alert_retry_initial_s,
                            retry_max_s=s.alert_retry_max_s,
                            poll_s=s.poll_interval_s,
                            log_lines=s.alert_log_lines,
                            public_url=s.links_base,
                        ),
                    )
                    self.relay.liveness = self.liveness
                    self.relay.start()
        except BaseException:
            if self.http_processes is not None:
                await self.http_processes.stop()
            if self.relay is not None:
                await self.relay.stop()
            if self.freshness is not None:
                await self.freshness.stop()
            if self.triggerer is not None:
                await self.triggerer.stop()
            await self._stop_sources()
            if self.http is not None:
                await self.http.stop()
            if self.metrics_http is not None:
                await self.metrics_http.stop()
            if self._loop_lag is not None:
                self._loop_lag.cancel()
            await self.db.close()
            raise

    async def register(self, workflows: Iterable[WorkflowSpec]) -> dict[str, str]:
        assert self.engine is not None, "start() first"
        specs = list(workflows)
        versions = await self.engine.register(specs)
        for name, version in versions.items():
            log.info("workflow %s is at version %s", name, version)
        self.route(specs)
        if self.http_processes is not None:
            await self.http_processes.follow(self.workflows.values())
        return versions

    def route(self, workflows: Iterable[WorkflowSpec]) -> None:
        """Route events by ``workflows`` too (registered already)."""
        self.workflows.update({spec.name: spec for spec in workflows})
        router = Router(self.workflows.values())
        if self.intake is not None:
            self.intake.use_router(router)
        for source in self.sources:
            source.use_router(router)

    def _more_http_processes(self, port: int) -> HttpProcesses:
        """The other processes serving ``port``: the HTTP role only, no metrics port."""
        settings = self.settings.model_copy(
            update={"http_port": port, "roles": "api", "metrics_port": None}
        )
        launch = Launch(
            settings,
            self.database_url,
            tuple(self.workflows.values()),
            logging.getLogger().getEffectiveLevel(),
        )
        return HttpProcesses(self._webhook_processes - 1, launch, sleep=self.clock.sleep)

    def use_handlers(self, registry: HandlerRegistry) -> None:
        """Swap in freshly loaded handlers; attempts already running keep theirs."""
        self.registry = registry
        if self.worker is not None:
            self.worker.registry = registry
        if self.triggerer is not None and self.triggerer.polls is not None:
            self.triggerer.polls.registry = registry

    async def _stop_sources(self) -> None:
        while self._started_sources:
            source = self._started_sources.pop()
            await _shutdown_step(f"source {source.name}", source.stop())

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking events, give running attempts ``grace_s`` (default: the
        ``shutdown_grace_s`` setting) to finish, commit every outcome, and only
        then close the database."""
        if grace_s is None:
            grace_s = self.settings.shutdown_grace_s
        if self.http_processes is not None:
            await _shutdown_step("the other HTTP processes", self.http_processes.stop())
        await self._stop_sources()
        if self.triggerer is not None:
            await _shutdown_step("the triggerer", self.triggerer.stop())
        if self.freshness is not None:
            await _shutdown_step("the freshness watch", self.freshness.stop())
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self.http is not None:
            await _shutdown_step("the HTTP server", self.http.stop())
        if self.metrics_http is not None:
            await _shutdown_step("the metrics server", self.metrics_http.stop())
        if self._loop_lag is not None:
            self._loop_lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_lag
        if self.worker is not None:
            await self.worker.stop(grace_s)
        if self.relay is not None:
            await _shutdown_step("the alert relay", self.relay.stop())
        if self._wakeups is not None:
            await _shutdown_step("the NOTIFY listener", self._wakeups.close())
        await _shutdown_step("the handlers", self.registry.shutdown())
        if self.db is not None:
            await self.db.close()

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

"""One settings model, read from ``ORCHESTRATOR_*`` environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.alert_spec import AlertRule
from orchestrator.errors import ConfigError

_ORIGIN = re.compile(r"https?://[^/\s?#]+\Z", re.IGNORECASE)


class Settings(BaseSettings):
    """Every knob of the orchestrator. Unset values take the defaults below."""

    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="ignore")

    database_url: SecretStr | None = None
    """PostgreSQL URL. Unset: ``dev`` starts an embedded server under ``data_dir``."""
    data_dir: Path = Path(".orchestrator")
    """Where ``dev`` keeps the embedded database and other local state."""
    db_pool_size: int = Field(default=8, ge=2, le=200)
    """Connections each process keeps open (one more is used for LISTEN)."""

    worker_slots: int = Field(default=16, ge=0, le=10_000)
    """Tasks one process runs at once (0 = this process runs no tasks)."""
    claim_batch: int = Field(default=64, ge=1, le=10_000)
    """Most task instances claimed in one statement."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    """Safety-net poll when no NOTIFY arrives."""
    lease_s: float = Field(default=30.0, gt=0, le=86_400)
    """How long a claim holds without a heartbeat before another worker may take it over."""
    heartbeat_s: float | None = Field(default=None, gt=0)
    """Lease renewal interval; default a third of ``lease_s``."""
    reaper_interval_s: float | None = Field(default=None, gt=0)
    """How often expired leases and due retries are looked for; default ``lease_s / 3``."""
    flush_delay_s: float = Field(default=0.001, ge=0, le=1)
    """How long finished attempts wait to share one commit with others."""
    worker_flushers: int = Field(default=2, ge=1, le=32)
    """Commits of finished attempts one process keeps in flight at once: while
    one waits for its commit to be durable, the next batch is recorded."""
    max_output_bytes: int = Field(default=1_048_576, ge=1)
    """Largest JSON output a handler may return."""
    task_log_max_bytes: int = Field(default=1_048_576, ge=1024)
    """Most bytes of log kept per attempt (``ctx.log`` records, stdout, stderr);
    the rest is dropped and the cut is marked in the log."""
    secrets_dir: Path | None = None
    """A directory of secret files (Kubernetes / Docker secrets layout): the file
    ``NAME`` holds the value of ``{{ secrets.NAME }}``."""
    task_log_flush_s: float = Field(default=0.2, gt=0, le=60)
    """How long captured task log lines wait to be stored together in one batch."""
    default_pool_slots: int = Field(default=128, ge=1)
    """Slots given to a named pool the first time a workflow uses it."""
    pools: dict[str, int] = Field(default_factory=dict)
    """Pool sizes to set at start, as JSON: ``{"warehouse": 4}``."""
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=3600)
    """On SIGINT/SIGTERM, how long running attempts may still finish; those
    still running then are interrupted and recorded as failed attempts
    (retried per their policy) before the process exits."""

    # -- event intake -------------------------------------------------------------
    max_payload_bytes: int = Field(default=1_048_576, ge=1)
    """Largest event any source accepts: a webhook or API body (larger: 413), a
    Kafka message value (larger: dead-lettered, its partition keeps flowing).
    Landing-zone events carry file metadata, not contents, so any file size is fine."""
    http_host: str = "127.0.0.1"
    """Where the HTTP API and webhooks listen."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """0 picks a free port (it is logged)."""
    http_read_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """A request's head must arrive within this long of the connection opening
    (or of the previous answer on it), and its body within this long of the
    head; else 408 or the connection is closed. Idle connections close after it too."""
    http_max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    """HTTP connections served at once; more are answered 503 and closed."""
    access_log: bool = True
    """One INFO line per HTTP answer (method, path without tokens, status,
    duration); ``dev`` leaves it off unless set."""
    health_stale_s: float = Field(default=60.0, gt=0, le=3600)
    """A loop (worker claims, triggerer) that has not come round for this long
    makes ``/healthz`` answer 503: the process is stuck and should be restarted."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve ``/metrics`` (and ``/healthz``) on this port too: for replicas
    without the API role, whose metrics would otherwise have no port."""
    api_auth: Literal["auto", "tokens", "none"] = "auto"
    """``auto``: the API is open to callers on a loopback ``http_host`` and
    needs a token (``orchestrator tokens create``) on any other; ``tokens``:
    always needs one; ``none``: open wherever it listens (set it explicitly)."""
    api_token_cache_s: float = Field(default=5.0, ge=0, le=300)
    """How long a looked-up token is trusted before it is read again: a
    revoked or expired token is refused within this time."""
    cors_origins: str = ""
    """Comma-separated origins (``https://ui.example.com``) whose web pages may
    call ``/api/v1`` cross-origin. Empty: none may."""
    webhook_tolerance_s: float = Field(default=300.0, gt=0)
    """How far a signed webhook's timestamp may be from now, either way."""
    intake_batch_delay_s: float = Field(default=0.002, ge=0, le=1)
    """Webhook deliveries and API triggers arriving within this window share one commit."""

    kafka_bootstrap: str | None = None
    """Kafka bootstrap servers (``host:port,...``). Unset: ``dev`` starts an embedded broker."""
    kafka_group_id: str = "orchestrator"
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", pattern="^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$"
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, pattern="^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$"
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_idempotent_producer: bool = True
    """Turn off for brokers without the idempotent producer (e.g. the embedded one)."""
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    """Consumer session; heartbeats at a quarter of it. A shorter session also
    makes group joins quicker on brokers that wait half of it for members."""
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=60_000)
    """How long a fetch may wait for data. Kafka answers as soon as data comes;
    some brokers (the embedded one) hold the full wait, so dev lowers it."""
    kafka_batch_max: int = Field(default=1000, ge=1, le=100_000)
    """Most messages recorded in one transaction."""
    kafka_fetch_partition_bytes: int = Field(default=1_048_576, ge=1024, le=1_073_741_824)
    """Most bytes one fetch takes from a partition (a message larger than this
    is still fetched, alone)."""
    dataset_topic: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._\-]+$"
    )
    """A Kafka topic whose JSON messages report dataset updates made elsewhere:
    ``{"uri": ..., "logical_date": ..., "metadata": {...}}``."""
    dataset_freshness_check_s: float = Field(default=60.0, gt=0, le=86_400)
    """How often the scheduler role checks datasets' ``fresh_within``."""

    # -- lifecycle events ---------------------------------------------------------
    lifecycle_topic: str | None = Field(
        default=None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._\-]+$"
    )
    """A Kafka topic that receives every run and task transition, dataset update
    and alert as a CloudEvent, keyed by run id. Unset: nothing is published."""
    lifecycle_relay: bool = True
    """Publish from processes with the worker role (off: another replica does)."""
    lifecycle_source: str = Field(default="/orchestrator", min_length=1)
    """The CloudEvents ``source`` attribute of every published event."""
    lifecycle_partitions: int = Field(default=4, ge=1, le=1024)
    """Partitions of run ids relays share the work by (read when a group's
    cursors are first created; later changes keep the created number)."""
    lifecycle_batch: int = Field(default=2000, ge=1, le=100_000)
    """Most events published between two durable checkpoints."""
    lifecycle_poll_s: float = Field(default=0.2, gt=0, le=60)
    """How often an idle partition is looked at again (bounds the lag when idle)."""
    lifecycle_lease_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a relay holds a partition without a checkpoint before another
    relay takes it over (and publishes again what was not checkpointed)."""

    landing_dir: Path = Path("landing")
    """The landing zone watched for files."""
    landing_rescan_s: float = Field(default=30.0, gt=0)
    """Full rescan interval, for files the watcher missed."""

    schedule_tick_s: float = Field(default=1.0, gt=0, le=3600)
    """How often the scheduler looks for due intervals."""

    retention_days: float = Field(default=30.0, gt=0)
    """Events, dead letters and ended runs older than this are pruned."""
    prune_interval_s: float = Field(default=3600.0, gt=0)
    prune_batch: int = Field(default=5000, ge=1)

    # -- alerts ------------------------------------------------------------------------
    alert_rules: list[AlertRule] = Field(default_factory=list)
    """Project-wide alert rules, as JSON (a list shaped like a workflow's
    ``alerts``); they apply to every workflow besides its own."""
    alert_relay: bool = True
    """Deliver alerts from processes with the worker role (off: another replica does)."""
    alert_max_attempts: int = Field(default=8, ge=1, le=1000)
    """Sends of one alert to one route before it is kept as undelivered."""
    alert_retry_initial_s: float = Field(default=1.0, gt=0, le=3600)
    alert_retry_max_s: float = Field(default=300.0, gt=0, le=86_400)
    alert_log_lines: int = Field(default=20, ge=0, le=1000)
    """Lines of the failed attempt's log an alert carries."""
    public_url: str | None = None
    """Base of the links alerts carry (default: ``http://<http_host>:<http_port>``)."""

    roles: str = "api,kafka,files,scheduler,worker,triggerer"
    """Comma-separated components this process runs."""

    workflows_path: Path = Path("examples")
    """Where ``run`` and ``dev`` load workflows and handlers from."""
    log_level: str = "INFO"
    log_format: str = Field(default="human", pattern="^(human|json)$")

    @field_validator("log_level")
    @classmethod
    def _level_known(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value.upper()

    @field_validator("pools")
    @classmethod
    def _pool_sizes_positive(cls, value: dict[str, int]) -> dict[str, int]:
        for name, slots in value.items():
            if slots < 1:
                raise ValueError(f"pool {name!r} must have at least 1 slot, not {slots}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_well_formed(cls, value: str) -> str:
        origins = [o.strip() for o in value.split(",") if o.strip()]
        for origin in origins:
            if not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port], "
                    "e.g. https://ui.example.com, without a path or a trailing slash"
                )
        return ",".join(origins)

    @field_validator("roles")
    @classmethod
    def _roles_known(cls, value: str) -> str:
        known = {"api", "kafka", "files", "scheduler", "worker", "triggerer"}
        given = {r.strip() for r in value.split(",") if r.strip()}
        unknown = given - known
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; known: {sorted(known)}")
        return ",".join(sorted(given))

    @property
    def cors_origin_list(self) -> list[str]:
        return [o for o in self.cors_origins.split(",") if o]

    def has_role(self, role: str) -> bool:
        return role in self.roles.split(",")

    def webhook_secret(self, hook: str) -> SecretStr | None:
        """``ORCHESTRATOR_WEBHOOK_SECRET_<HOOK>``: secrets stay in the environment."""
        value = os.environ.get(webhook_secret_variable(hook))
        return SecretStr(value) if value else None

    @property
    def links_base(self) -> str:
        return self.public_url or f"http://{self.http_host}:{self.http_port}"

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_s or self.lease_s / 3

    @property
    def reaper_interval(self) -> float:
        return self.reaper_interval_s or self.lease_s / 3


def webhook_secret_variable(hook: str) -> str:
    return "ORCHESTRATOR_WEBHOOK_SECRET_" + hook.upper().replace("-", "_")


#: Variables that were renamed: a value left under the old name must not be ignored silently.
RENAMED = {"ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES": "ORCHESTRATOR_MAX_PAYLOAD_BYTES"}


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one message per bad key."""
    renamed = [f"{old} is now {new}" for old, new in RENAMED.items() if old in os.environ]
    if renamed:
        raise ConfigError("renamed settings:\n  " + "\n  ".join(renamed))
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = "ORCHESTRATOR_" + "_".join(str(p) for p in err["loc"][:1]).upper()
            lines.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None

"""One settings model, read from ``ORCHESTRATOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.errors import ConfigError


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
    max_output_bytes: int = Field(default=1_048_576, ge=1)
    """Largest JSON output a handler may return."""
    default_pool_slots: int = Field(default=128, ge=1)
    """Slots given to a named pool the first time a workflow uses it."""
    pools: dict[str, int] = Field(default_factory=dict)
    """Pool sizes to set at start, as JSON: ``{"warehouse": 4}``."""

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

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_s or self.lease_s / 3

    @property
    def reaper_interval(self) -> float:
        return self.reaper_interval_s or self.lease_s / 3


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one message per bad key."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = "ORCHESTRATOR_" + "_".join(str(p) for p in err["loc"][:1]).upper()
            lines.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None

"""Settings for an orchestrator started inside a test, shared by every test file."""

from __future__ import annotations

from typing import Any

from orchestrator.settings import Settings

#: A few worker slots; a quick poll as the safety net behind NOTIFY; leases short
#: enough that a lost attempt comes back within a test; a free port whenever the
#: orchestrator serves HTTP, so tests never clash on 8080.
SUITE_DEFAULTS: dict[str, Any] = {
    "worker_slots": 4,
    "poll_interval_s": 0.2,
    "lease_s": 5.0,
    "http_port": 0,
}


def suite_settings(**overrides: Any) -> Settings:
    """:data:`SUITE_DEFAULTS`, then ``overrides``. A test file whose tests all
    want other values binds them once: ``settings = partial(suite_settings, ...)``
    (a call's own keywords still win over the bound ones)."""
    return Settings(**{**SUITE_DEFAULTS, **overrides})

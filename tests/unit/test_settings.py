"""Settings: one payload limit for every source; a renamed variable is not ignored."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import load_settings


def test_one_payload_limit_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().max_payload_bytes == 1_048_576
    monkeypatch.setenv("ORCHESTRATOR_MAX_PAYLOAD_BYTES", "65536")
    assert load_settings().max_payload_bytes == 65_536
    monkeypatch.setenv("ORCHESTRATOR_MAX_PAYLOAD_BYTES", "0")
    with pytest.raises(ConfigError, match="ORCHESTRATOR_MAX_PAYLOAD_BYTES"):
        load_settings()


def test_the_old_webhook_body_limit_is_refused_naming_its_new_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES", "4096")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "ORCHESTRATOR_WEBHOOK_MAX_BODY_BYTES is now ORCHESTRATOR_MAX_PAYLOAD_BYTES" in str(
        raised.value
    )

"""``{{ secrets.NAME }}`` in a trigger setting (a webhook's ``secret``):
resolved when the hook is set up, never stored or printed; ``validate`` warns
when no backend holds it, and the set-up error names the secret, not a value."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from orchestrator.app import Orchestrator
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.models import WebhookTrigger
from sources.webhook import WebhookSource

ROOT = Path(__file__).resolve().parents[2]
SECRET = "tok-9c1d4e-Trigger-Secret"
HOOKED = WorkflowSpec(
    name="hooked",
    tasks=(TaskSpec(id="t", handler="noop"),),
    triggers=(WebhookTrigger(hook="paid", auth="bearer", secret="{{ secrets.PAID_HOOK }}"),),
)

pytestmark = pytest.mark.timeout(120)


async def _post(base: str, token: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/hooks/paid", json={"n": 1}, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, await resp.text()


async def test_a_webhook_secret_named_by_its_trigger_authenticates_deliveries(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SECRET_PAID_HOOK", SECRET)
    settings = Settings(worker_slots=0, http_port=0)
    async with Orchestrator(
        settings, db_url, workflows=[HOOKED], sources=[WebhookSource()], http=True
    ) as orch:
        assert orch.http is not None and orch.db is not None
        base = f"http://127.0.0.1:{orch.http.port}"
        status, body = await _post(base, SECRET)
        assert status == 202, body
        status, body = await _post(base, "tok-wrong")
        assert status == 401 and SECRET not in body
        async with orch.db.pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM workflow_versions WHERE spec::text LIKE '%' || $1 || '%'",
                SECRET,
            )
            kept = await conn.fetchval(
                "SELECT spec->'triggers'->0->>'secret' FROM workflow_versions"
            )
        assert stored == 0 and kept == "{{ secrets.PAID_HOOK }}"


async def test_a_missing_trigger_secret_is_named_when_the_hook_is_set_up(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_SECRET_PAID_HOOK", raising=False)
    monkeypatch.setenv("ORCHESTRATOR_WEBHOOK_SECRET_PAID", SECRET)  # not the one named
    settings = Settings(worker_slots=0, http_port=0)
    with caplog.at_level(logging.ERROR, logger="sources.webhook"):
        async with Orchestrator(
            settings, db_url, workflows=[HOOKED], sources=[WebhookSource()], http=True
        ) as orch:
            assert orch.http is not None
            status, body = await _post(f"http://127.0.0.1:{orch.http.port}", SECRET)
            assert status == 503 and SECRET not in body
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "webhook 'paid' secret: secret 'PAID_HOOK' is not set" in logged
    assert SECRET not in logged


def test_a_trigger_setting_takes_a_reference_not_a_secret() -> None:
    with pytest.raises(ValidationError, match="must name a secret"):
        WebhookTrigger(hook="paid", auth="bearer", secret=SECRET)
    with pytest.raises(ValidationError, match="must name a secret"):
        WebhookTrigger(hook="paid", auth="bearer", secret="x{{ secrets.PAID_HOOK }}")


def test_validate_warns_about_a_trigger_secret_no_backend_holds(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        "name: hooked\n"
        "triggers:\n"
        "  - source: webhook\n"
        "    hook: paid\n"
        "    auth: bearer\n"
        "    secret: '{{ secrets.NOBODY_HAS_THIS }}'\n"
        "  - source: webhook\n"
        "    hook: other\n"
        "    auth: bearer\n"
        "    secret: '{{ secrets.KNOWN_ONE }}'\n"
        "tasks:\n"
        "  - id: t\n"
        "    handler: noop\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    env["ORCHESTRATOR_SECRET_KNOWN_ONE"] = SECRET
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ok  hooked" in done.stdout
    assert (
        "workflow 'hooked' triggers[0] (webhook) secret: secret 'NOBODY_HAS_THIS' is not set"
        in done.stderr
    )
    assert "KNOWN_ONE" not in done.stderr and SECRET not in done.stdout + done.stderr

"""The served OpenAPI document, and schemathesis against a real server.

Every ``/api/v1`` route is described; the document is valid OpenAPI 3.1 and
what the server answers: schemathesis generates requests from it (bounded
examples per operation) against ``orchestrator run`` with the example
workflows and an admin token, and finds no 5xx and no answer that breaks
the schema.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from eventually import wait_until
from hypothesis import HealthCheck, settings
from schemathesis import checks

from orchestrator.api import describe_api
from orchestrator.openapi import api_routes, operation_of
from orchestrator.store import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
EXE = [sys.executable, "-m", "orchestrator.cli"]

#: The live stream never ends by itself; tests of the UI read it.
schema = schemathesis.openapi.from_dict(describe_api()).exclude(path="/api/v1/live")


def test_every_api_route_is_described() -> None:
    from typing import cast

    from orchestrator.api import build_app

    nothing = cast(Any, None)
    app = build_app(nothing, nothing, authenticator=nothing, max_body_bytes=1)
    routes = api_routes(app)
    assert len(routes) >= 10
    missing = [f"{m} {p}" for m, p, handler in routes if operation_of(handler) is None]
    assert not missing, f"routes without an OpenAPI operation: {missing}"


def test_the_document_is_printed_by_the_cli_and_names_its_security() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [*EXE, "openapi"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    import json

    doc = json.loads(out.stdout)
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    assert doc["paths"]["/api/v1/callbacks/{token}"]["post"]["security"] == []
    problem = doc["paths"]["/api/v1/runs"]["get"]["responses"]["401"]["content"]
    assert "application/problem+json" in problem


class Served:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token


@pytest.fixture(scope="module")
def served(
    pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    name = f"orch_api_{uuid.uuid4().hex[:10]}"
    db_url = asyncio.run(create_database(pg_admin_url, name, template=template_db))
    tmp = tmp_path_factory.mktemp("api")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        PYTHONPATH=str(ROOT),
        ORCHESTRATOR_DATABASE_URL=db_url,
        ORCHESTRATOR_API_AUTH="tokens",
        ORCHESTRATOR_HTTP_PORT="0",
        ORCHESTRATOR_ROLES="api,worker",
        ORCHESTRATOR_LOG_LEVEL="INFO",
    )
    made = subprocess.run(
        [*EXE, "tokens", "create", "fuzz", "--role", "admin"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    token = made.stdout.strip()
    log = tmp / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*EXE, "run", "--path", str(ROOT / "examples")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            text=True,
        )
        try:

            def listening() -> str | None:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited:\n{log.read_text()}")
                found = re.search(r"HTTP API on (http://\S+)", log.read_text())
                return found.group(1) if found else None

            base = wait_until(listening, timeout=60, what="the API to listen")
            assert base is not None
            yield Served(base, token)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            asyncio.run(drop_database(pg_admin_url, name))


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_answers_as_its_document_says(case: Any, served: Served) -> None:
    # Not every refusal can be written as a schema (no NUL character in any
    # string PostgreSQL stores, a workflow's declared params): a refused
    # schema-valid request is fine, as long as it is a documented problem.
    case.call_and_validate(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.token}"},
        checks=[
            checks.not_a_server_error,
            checks.status_code_conformance,
            checks.content_type_conformance,
            checks.response_schema_conformance,
        ],
    )
